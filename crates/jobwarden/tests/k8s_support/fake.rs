//! A small stateful fake Kubernetes API server for whole-scenario tests (issue 4, "Tests",
//! layer 1): an axum `Router` that kube's `Client::new(router, "default")` talks to in-process,
//! or that listens on a loopback port ([`Fake::serve_loopback`]).
//!
//! It keeps Jobs, Pods, PVCs, Secrets, ConfigMaps, events.k8s.io/v1 Events and
//! coordination.k8s.io/v1 Leases per namespace with a rising `resourceVersion`, and a `uid` and
//! `creationTimestamp` set on create, and answers as a 1.36 API server does
//! (as observed on a real 1.36 control plane):
//! - LIST, cluster-wide or namespaced, with `labelSelector` (`k`, `!k`, `k=v`, `k==v`, `k!=v`,
//!   comma-separated), `limit` / `continue`, the list's `resourceVersion`, and metadata-only
//!   lists when asked with `Accept: …;as=PartialObjectMetadataList` (kube's `list_metadata`);
//! - GET; POST (409 AlreadyExists); PUT (409 Conflict on a stale `resourceVersion`, 422
//!   without one); PATCH as a JSON merge patch (also for strategic-merge bodies, which for the
//!   maps and scalars jobwarden sends merge the same way), on the object or its `/status`;
//! - DELETE with `propagationPolicy` (Jobs default to Orphan, as batch/v1 does; Foreground sets
//!   `deletionTimestamp` and the `foregroundDeletion` finalizer until the Job's pods are gone;
//!   Background removes the Job and deletes its pods; Orphan removes it and strips the pods'
//!   ownerReferences), `preconditions.uid` (409 on mismatch), `gracePeriodSeconds` (pods: a
//!   pod stays until its grace passes and a kubelet removes it: there is none here, so only a
//!   grace-0 delete of a pod without finalizers removes it; unscheduled or terminal pods get
//!   grace 0) and `dryRun=All` (answers, changes nothing); objects with finalizers stay, marked
//!   deleting, until the finalizers are gone;
//! - WATCH from a `resourceVersion`: ADDED / MODIFIED / DELETED as newline-delimited JSON for
//!   every change; [`Fake::expire_watches`] ends every open watch with an `ERROR` event carrying
//!   a 410 Status ("too old resource version") and answers later watches from an older
//!   version the same way, so kube's watcher re-lists;
//! - errors as `Status` bodies (kind Status, apiVersion v1, status Failure, reason, code);
//!   [`Fake::fail`] injects a 429 (with `Retry-After`) / 5xx for a method and path a number of
//!   times, [`Fake::hang`] never answers them;
//! - every request is recorded ([`Fake::requests`]).
//!
//! Not a reimplementation of Kubernetes: no validation beyond the above, no kubelet, no TTL
//! controller. [`Fake::job_controller_tick`] is the Job controller's part a scenario needs,
//! run only when the test calls it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jobwarden::model::Timestamp;
use serde_json::{Value, json};

use super::{Seen, status};

/// `(resource, namespace, name)`.
type Key = (String, String, String);

/// A clock the fake stamps `creationTimestamp` and `deletionTimestamp` with.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What an injected fault does to a request.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Answer with this code and a Status body (`Retry-After` and `retryAfterSeconds` when
    /// given).
    Status {
        /// HTTP code (429, 500, 503, …).
        code: u16,
        /// Seconds to wait, for 429 / 503.
        retry_after: Option<u32>,
    },
    /// Never answer.
    Hang,
}

#[derive(Debug, Clone)]
struct Fault {
    /// `GET`, `POST`, …, or `WATCH` for a GET with `watch=true`.
    method: String,
    path: String,
    kind: FaultKind,
    remaining: usize,
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    uids: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    /// Watches from a resourceVersion below this are answered 410.
    oldest_rv: u64,
    /// Bumped by `expire_watches`: open watches of an older generation end with a 410.
    generation: u64,
    paused: bool,
    requests: Vec<Seen>,
    /// When each request arrived, by the fake's clock.
    times: Vec<Timestamp>,
    faults: Vec<Fault>,
}

/// The fake API server. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Fake {
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    clock: Clock,
    /// Nanoseconds spent in the fake's own (synchronous, never yielding) request handling and
    /// watch-stream encoding: its CPU, which benches report beside their figures.
    busy: Arc<std::sync::atomic::AtomicU64>,
}

/// The apiVersion and kind of a resource the fake keeps.
fn type_of(resource: &str) -> Option<(&'static str, &'static str)> {
    Some(match resource {
        "jobs" => ("batch/v1", "Job"),
        "pods" => ("v1", "Pod"),
        "persistentvolumeclaims" => ("v1", "PersistentVolumeClaim"),
        "secrets" => ("v1", "Secret"),
        "configmaps" => ("v1", "ConfigMap"),
        "events" => ("events.k8s.io/v1", "Event"),
        "leases" => ("coordination.k8s.io/v1", "Lease"),
        _ => return None,
    })
}

/// The resource (plural) of a kind the fake keeps.
pub fn resource_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Job" => "jobs",
        "Pod" => "pods",
        "PersistentVolumeClaim" => "persistentvolumeclaims",
        "Secret" => "secrets",
        "ConfigMap" => "configmaps",
        "Event" => "events",
        "Lease" => "leases",
        _ => return None,
    })
}

/// A resource's name in Status messages (`jobs.batch`, `pods`).
fn qualified(resource: &str) -> String {
    match resource {
        "jobs" => "jobs.batch".into(),
        "events" => "events.events.k8s.io".into(),
        "leases" => "leases.coordination.k8s.io".into(),
        other => other.into(),
    }
}

/// Whole seconds, as the API server writes object timestamps.
pub fn k8s_time(t: Timestamp) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// One term of a label selector.
#[derive(Clone)]
enum Term {
    Exists(String),
    Absent(String),
    Eq(String, String),
    Ne(String, String),
}

fn parse_selector(s: &str) -> Result<Vec<Term>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                Ok(Term::Ne(k.trim().into(), v.trim().into()))
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Ok(Term::Eq(k.trim().into(), v.trim().into()))
            } else if let Some(k) = t.strip_prefix('!') {
                Ok(Term::Absent(k.trim().into()))
            } else if t.contains(' ') || t.contains('(') {
                Err(format!(
                    "unable to parse requirement: {t:?} (the fake knows k, !k, k=v, k!=v)"
                ))
            } else {
                Ok(Term::Exists(t.into()))
            }
        })
        .collect()
}

fn selected(obj: &Value, terms: &[Term]) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    terms.iter().all(|t| match t {
        Term::Exists(k) => get(k).is_some(),
        Term::Absent(k) => get(k).is_none(),
        Term::Eq(k, v) => get(k) == Some(v.as_str()),
        // As in Kubernetes: `!=` also matches objects without the label.
        Term::Ne(k, v) => get(k) != Some(v.as_str()),
    })
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

fn is_terminal_pod(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

fn owned_by(obj: &Value, uid: &str) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
}

fn json_response(code: u16, v: &Value) -> Response {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

fn error(code: u16, reason: &str, message: &str) -> Response {
    json_response(code, &status(code, reason, message))
}

/// The request's target.
struct Target {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        other => (None, other),
    };
    let (resource, name, status) = match rest {
        [r] => (*r, None, false),
        [r, n] => (*r, Some(n.to_string()), false),
        [r, n, "status"] => (*r, Some(n.to_string()), true),
        _ => return None,
    };
    type_of(resource)?;
    Some(Target {
        resource: resource.to_owned(),
        namespace,
        name,
        status,
    })
}

impl State {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores `obj` under a new resourceVersion and logs the change.
    fn put(&mut self, key: &Key, mut obj: Value, kind: &'static str) -> Value {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        self.objects.insert(key.clone(), obj.clone());
        self.log.push(Change {
            rv,
            resource: key.0.clone(),
            namespace: key.1.clone(),
            kind,
            object: obj.clone(),
        });
        obj
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        self.log.push(Change {
            rv,
            resource: key.0.clone(),
            namespace: key.1.clone(),
            kind: "DELETED",
            object: obj.clone(),
        });
        Some(obj)
    }

    fn create(&mut self, key: &Key, mut obj: Value, now: Timestamp) -> Value {
        self.uids += 1;
        let (api_version, kind) = type_of(&key.0).expect("known resource");
        obj["apiVersion"] = api_version.into();
        obj["kind"] = kind.into();
        let meta = &mut obj["metadata"];
        meta["name"] = key.2.clone().into();
        meta["namespace"] = key.1.clone().into();
        if meta["uid"].as_str().is_none_or(str::is_empty) {
            meta["uid"] = format!("00000000-0000-4000-8000-{:012x}", self.uids).into();
        }
        if meta["creationTimestamp"].is_null() {
            meta["creationTimestamp"] = k8s_time(now).into();
        }
        self.put(key, obj, "ADDED")
    }

    /// Deletes one object (DELETE or the garbage collector). `grace`: requested
    /// `gracePeriodSeconds`. Returns the object as it is after the call.
    fn delete_object(&mut self, key: &Key, grace: Option<i64>, now: Timestamp) -> Option<Value> {
        let mut obj = self.objects.get(key)?.clone();
        if key.0 == "pods" {
            let own = obj["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30);
            let mut grace = grace.unwrap_or(own).max(0);
            // Grace is forced to 0 for unscheduled and terminal pods (KUBERNETES.md §3).
            if obj["spec"]["nodeName"].as_str().is_none() || is_terminal_pod(&obj) {
                grace = 0;
            }
            if grace == 0 && !has_finalizers(&obj) {
                return self.remove(key);
            }
            // A pending deletion is only ever shortened.
            let pending = obj["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if pending.is_some_and(|p| p <= grace) {
                return Some(obj);
            }
            let at = jobwarden::model::add(now, Duration::from_secs(grace.unsigned_abs()));
            obj["metadata"]["deletionTimestamp"] = k8s_time(at).into();
            obj["metadata"]["deletionGracePeriodSeconds"] = grace.into();
            return Some(self.put(key, obj, "MODIFIED"));
        }
        if !has_finalizers(&obj) {
            return self.remove(key);
        }
        if obj["metadata"]["deletionTimestamp"].is_null() {
            obj["metadata"]["deletionTimestamp"] = k8s_time(now).into();
            obj["metadata"]["deletionGracePeriodSeconds"] = 0.into();
            return Some(self.put(key, obj, "MODIFIED"));
        }
        Some(obj)
    }

    fn owned_pods(&self, namespace: &str, uid: &str) -> Vec<Key> {
        self.objects
            .iter()
            .filter(|((r, ns, _), o)| r == "pods" && ns == namespace && owned_by(o, uid))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The Job controller's pod counts in the Job's status (KUBERNETES.md §7): `active`
    /// (not terminal, not being deleted; omitted at 0), `ready` (of those, Running) and
    /// `terminating` (being deleted, not terminal; always present). Written only on change.
    fn count_pods(&mut self, key: &Key, uid: &str) {
        let Some(mut job) = self.objects.get(key).cloned() else {
            return;
        };
        let (mut active, mut ready, mut terminating) = (0_u64, 0_u64, 0_u64);
        for pod in self.owned_pods(&key.1, uid) {
            let p = &self.objects[&pod];
            if is_terminal_pod(p) {
                continue;
            }
            if p["metadata"]["deletionTimestamp"].is_null() {
                active += 1;
                ready += u64::from(p["status"]["phase"] == "Running");
            } else {
                terminating += 1;
            }
        }
        let before = job["status"].clone();
        if let Some(st) = job["status"].as_object_mut() {
            if active == 0 {
                st.remove("active");
            } else {
                st.insert("active".into(), active.into());
            }
            st.insert("ready".into(), ready.into());
            st.insert("terminating".into(), terminating.into());
        }
        if job["status"] != before {
            self.put(key, job, "MODIFIED");
        }
    }

    /// The garbage collector: Jobs deleted in the Foreground go once their pods are gone;
    /// objects being deleted go once their finalizers are gone.
    fn collect_garbage(&mut self) {
        loop {
            let mut progress = false;
            let deleting: Vec<(Key, Value)> = self
                .objects
                .iter()
                .filter(|(_, o)| !o["metadata"]["deletionTimestamp"].is_null())
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect();
            for (key, obj) in deleting {
                let fins: Vec<String> = obj["metadata"]["finalizers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| f.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
                let foreground = fins.iter().any(|f| f == "foregroundDeletion");
                if foreground && self.owned_pods(&key.1, uid).is_empty() {
                    let rest: Vec<&String> =
                        fins.iter().filter(|f| *f != "foregroundDeletion").collect();
                    let mut obj = obj.clone();
                    obj["metadata"]["finalizers"] = json!(rest);
                    self.put(&key, obj, "MODIFIED");
                    progress = true;
                    continue;
                }
                // A pod being deleted with grace waits for its kubelet, which (there is none
                // here) would finish it, report a terminal phase and remove it.
                let pod_waits = key.0 == "pods"
                    && obj["metadata"]["deletionGracePeriodSeconds"].as_i64() != Some(0)
                    && !is_terminal_pod(&obj);
                if fins.is_empty() && !pod_waits {
                    self.remove(&key);
                    progress = true;
                }
            }
            if !progress {
                return;
            }
        }
    }
}

/// Parsed `DeleteOptions` (body) and query.
#[derive(Default)]
struct DeleteOptions {
    propagation: Option<String>,
    uid: Option<String>,
    grace: Option<i64>,
    dry_run: bool,
}

impl Fake {
    /// An empty API server whose timestamps come from `clock`.
    pub fn new(clock: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        Fake {
            state: Arc::new(Mutex::new(State {
                rv: 100,
                oldest_rv: 0,
                ..State::default()
            })),
            changed: Arc::new(tokio::sync::watch::Sender::new(0)),
            clock: Arc::new(clock),
            busy: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Time spent in the fake's own handling (requests and watch encoding) since it started.
    /// Measured as wall time across code that never yields, so it is the fake's CPU time
    /// plus whatever preemption hit it.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn add_busy(&self, since: std::time::Instant) {
        let n = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.busy.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many requests so far `f` selects (without copying them).
    pub fn count_requests(&self, f: impl Fn(&Seen) -> bool) -> usize {
        self.lock().requests.iter().filter(|r| f(r)).count()
    }

    /// The router: use it as kube's `Client` service, or serve it.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(handle)
            .with_state(self.clone())
    }

    /// A kube `Client` talking to this fake in-process.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// Serves the fake on an ephemeral loopback port (for a kubeconfig pointing at
    /// `http://<addr>`); the server runs until the runtime ends.
    pub async fn serve_loopback(&self) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(addr)
    }

    /// Creates `obj` (its `kind` says where; `metadata.namespace` and `name` are required),
    /// keeping a `uid` and `creationTimestamp` it already has. Watches see it ADDED.
    pub fn insert(&self, obj: Value) -> Value {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let resource = resource_of(kind).unwrap_or_else(|| panic!("the fake keeps no {kind}"));
        let key = (
            resource.to_owned(),
            obj["metadata"]["namespace"]
                .as_str()
                .expect("namespace")
                .to_owned(),
            obj["metadata"]["name"].as_str().expect("name").to_owned(),
        );
        let now = (self.clock)();
        let out = {
            let mut s = self.lock();
            assert!(!s.objects.contains_key(&key), "{key:?} exists");
            s.create(&key, obj, now)
        };
        self.notify();
        out
    }

    /// Changes a stored object with `f` (a new resourceVersion; watches see it MODIFIED).
    pub fn modify(&self, resource: &str, namespace: &str, name: &str, f: impl FnOnce(&mut Value)) {
        {
            let mut s = self.lock();
            let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
            let mut obj = s.objects.get(&key).cloned().expect("object to modify");
            f(&mut obj);
            s.put(&key, obj, "MODIFIED");
            s.collect_garbage();
        }
        self.notify();
    }

    /// Removes an object at once, finalizers or not (watches see it DELETED).
    pub fn remove(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let out = self
            .lock()
            .remove(&(resource.to_owned(), namespace.to_owned(), name.to_owned()));
        self.notify();
        out
    }

    /// A stored object.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(resource.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every stored object of `resource`, by namespace and name.
    pub fn all(&self, resource: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((r, _, _), _)| r == resource)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// `namespace/name` of every stored object of `resource`.
    pub fn names(&self, resource: &str) -> Vec<String> {
        self.all(resource)
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["metadata"]["namespace"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.lock().requests.clone()
    }

    /// Every request so far with when it arrived (by the fake's clock), in order.
    pub fn timed_requests(&self) -> Vec<(Timestamp, Seen)> {
        let s = self.lock();
        s.times
            .iter()
            .copied()
            .zip(s.requests.iter().cloned())
            .collect()
    }

    /// Every request that is not a GET (list, get or watch), in order.
    pub fn mutations(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.method != "GET")
            .collect()
    }

    /// The next `times` requests with `method` (`GET`, `POST`, …, or `WATCH`) to exactly
    /// `path` (no query) are answered with `code` and a Status body; a `retry_after` goes into
    /// the `Retry-After` header and the Status details.
    pub fn fail(
        &self,
        method: &str,
        path: &str,
        code: u16,
        retry_after: Option<u32>,
        times: usize,
    ) {
        self.lock().faults.push(Fault {
            method: method.to_owned(),
            path: path.to_owned(),
            kind: FaultKind::Status { code, retry_after },
            remaining: times,
        });
    }

    /// Requests with `method` to `path` are never answered until [`Fake::clear_faults`].
    pub fn hang(&self, method: &str, path: &str) {
        self.lock().faults.push(Fault {
            method: method.to_owned(),
            path: path.to_owned(),
            kind: FaultKind::Hang,
            remaining: usize::MAX,
        });
    }

    /// Drops every injected fault (requests already hanging stay so).
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Compaction: every open watch ends with an `ERROR` event carrying a 410 Status, and a
    /// watch from any resourceVersion before now is answered the same way.
    pub fn expire_watches(&self) {
        {
            let mut s = self.lock();
            s.generation += 1;
            s.oldest_rv = s.rv;
        }
        self.notify();
    }

    /// While paused, open watches deliver nothing (a lagging watch); resuming delivers what
    /// was held back, in order.
    pub fn pause_watches(&self, paused: bool) {
        self.lock().paused = paused;
        self.notify();
    }

    /// The Job controller's part the scenarios need, at `now` (KUBERNETES.md §1, §3, §7):
    /// - an unfinished, unsuspended Job whose `status.startTime + activeDeadlineSeconds` has
    ///   passed gets `FailureTarget` (reason `DeadlineExceeded`), and its pods that are not
    ///   terminal or already deleting are deleted with their own grace;
    /// - a pod of a Job being deleted with grace 0 or terminal loses the
    ///   `batch.kubernetes.io/job-tracking` finalizer (not for `podReplacementPolicy: Failed`
    ///   unless terminal), so it goes;
    /// - every Job's `status.active` / `ready` / `terminating` count its pods;
    /// - a Job with `FailureTarget` and no pod left that is not terminal gets `Failed`.
    pub fn job_controller_tick(&self, now: Timestamp) {
        {
            let mut s = self.lock();
            let jobs: Vec<(Key, Value)> = s
                .objects
                .iter()
                .filter(|((r, _, _), _)| r == "jobs")
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect();
            for (key, mut job) in jobs {
                let uid = job["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let has = |job: &Value, t: &str| {
                    job["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter().any(|c| c["type"] == t && c["status"] == "True")
                    })
                };
                let finished = ["Failed", "Complete", "FailureTarget", "SuccessCriteriaMet"]
                    .iter()
                    .any(|t| has(&job, t));
                let start = job["status"]["startTime"]
                    .as_str()
                    .and_then(|t| t.parse::<Timestamp>().ok());
                let ads = job["spec"]["activeDeadlineSeconds"].as_i64();
                let suspended = job["spec"]["suspend"].as_bool().unwrap_or(false);
                let condition = |t: &str| {
                    json!({"type": t, "status": "True", "reason": "DeadlineExceeded",
                           "message": "Job was active longer than specified deadline",
                           "lastProbeTime": k8s_time(now), "lastTransitionTime": k8s_time(now)})
                };
                if !finished
                    && !suspended
                    && let (Some(start), Some(ads)) = (start, ads)
                    && jobwarden::model::add(start, Duration::from_secs(ads.max(0).unsigned_abs()))
                        <= now
                {
                    let mut cs = job["status"]["conditions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    cs.push(condition("FailureTarget"));
                    job["status"]["conditions"] = Value::Array(cs);
                    if let Some(st) = job["status"].as_object_mut() {
                        st.remove("active");
                    }
                    job = s.put(&key, job, "MODIFIED");
                    for pod in s.owned_pods(&key.1, &uid) {
                        let p = &s.objects[&pod];
                        if !is_terminal_pod(p) && p["metadata"]["deletionTimestamp"].is_null() {
                            s.delete_object(&pod, None, now);
                        }
                    }
                }
                let policy_failed = job["spec"]["podReplacementPolicy"] == "Failed"
                    || !job["spec"]["podFailurePolicy"].is_null();
                for pod in s.owned_pods(&key.1, &uid) {
                    let p = s.objects[&pod].clone();
                    let forced = p["metadata"]["deletionGracePeriodSeconds"].as_i64() == Some(0);
                    let release = is_terminal_pod(&p) || (forced && !policy_failed);
                    let tracked = p["metadata"]["finalizers"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|f| f == "batch.kubernetes.io/job-tracking"));
                    if release && tracked && !p["metadata"]["deletionTimestamp"].is_null() {
                        let mut p = p;
                        let rest: Vec<Value> = p["metadata"]["finalizers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|f| *f != "batch.kubernetes.io/job-tracking")
                            .cloned()
                            .collect();
                        p["metadata"]["finalizers"] = Value::Array(rest);
                        s.put(&pod, p, "MODIFIED");
                    }
                }
                s.collect_garbage();
                s.count_pods(&key, &uid);
                if has(&job, "FailureTarget") && !has(&job, "Failed") {
                    let left = s
                        .owned_pods(&key.1, &uid)
                        .iter()
                        .any(|p| !is_terminal_pod(&s.objects[p]));
                    if !left && let Some(mut job) = s.objects.get(&key).cloned() {
                        let mut cs = job["status"]["conditions"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        cs.push(condition("Failed"));
                        job["status"]["conditions"] = Value::Array(cs);
                        s.put(&key, job, "MODIFIED");
                    }
                }
            }
        }
        self.notify();
    }

    fn list(&self, t: &Target, query: &BTreeMap<String, String>, headers: &HeaderMap) -> Response {
        let terms = match parse_selector(query.get("labelSelector").map_or("", String::as_str)) {
            Ok(t) => t,
            Err(e) => return error(400, "BadRequest", &e),
        };
        let s = self.lock();
        let items: Vec<&Value> = s
            .objects
            .iter()
            .filter(|((r, ns, _), o)| {
                *r == t.resource
                    && t.namespace.as_ref().is_none_or(|n| n == ns)
                    && selected(o, &terms)
            })
            .map(|(_, o)| o)
            .collect();
        let start: usize = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(c) => match c.parse() {
                Ok(n) => n,
                Err(_) => return error(400, "BadRequest", "invalid continue token"),
            },
            None => 0,
        };
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let end = start.saturating_add(limit).min(items.len());
        let page = &items[start.min(end)..end];
        let metadata_only = headers
            .get("accept")
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("as=PartialObjectMetadataList"));
        let (api_version, kind) = type_of(&t.resource).expect("known");
        let mut meta = json!({"resourceVersion": s.rv.to_string()});
        if end < items.len() {
            meta["continue"] = end.to_string().into();
        }
        let body = if metadata_only {
            let items: Vec<Value> = page
                .iter()
                .map(|o| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]}))
                .collect();
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                   "metadata": meta, "items": items})
        } else {
            json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                   "metadata": meta, "items": page})
        };
        json_response(200, &body)
    }

    fn watch(&self, t: Target, query: &BTreeMap<String, String>) -> Response {
        let terms = match parse_selector(query.get("labelSelector").map_or("", String::as_str)) {
            Ok(t) => t,
            Err(e) => return error(400, "BadRequest", &e),
        };
        let from: Option<u64> = query
            .get("resourceVersion")
            .filter(|v| !v.is_empty() && *v != "0")
            .and_then(|v| v.parse().ok());
        let (start, generation, initial, gone) = {
            let s = self.lock();
            match from {
                Some(rv) if rv < s.oldest_rv => (rv, s.generation, Vec::new(), Some(rv)),
                Some(rv) => (rv, s.generation, Vec::new(), None),
                None => {
                    // No resourceVersion: every current object ADDED first.
                    let initial: Vec<Value> = s
                        .objects
                        .iter()
                        .filter(|((r, ns, _), o)| {
                            *r == t.resource
                                && t.namespace.as_ref().is_none_or(|n| n == ns)
                                && selected(o, &terms)
                        })
                        .map(|(_, o)| json!({"type": "ADDED", "object": o}))
                        .collect();
                    (s.rv, s.generation, initial, None)
                }
            }
        };
        if let Some(rv) = gone {
            let oldest = self.lock().oldest_rv;
            let line = gone_event(rv, oldest);
            let stream = futures::stream::iter([Ok::<_, std::convert::Infallible>(line)]);
            return (StatusCode::OK, Body::from_stream(stream)).into_response();
        }
        let first: Vec<u8> = initial
            .iter()
            .flat_map(|e| {
                let mut b = serde_json::to_vec(e).expect("json");
                b.push(b'\n');
                b
            })
            .collect();
        let fake = self.clone();
        let rx = self.changed.subscribe();
        let stream = futures::stream::unfold(
            (fake, rx, start, Some(first), false),
            move |(fake, mut rx, mut last, first, ended)| {
                let resource = t.resource.clone();
                let namespace = t.namespace.clone();
                let terms = terms.clone();
                async move {
                    if ended {
                        return None;
                    }
                    if let Some(first) = first.filter(|f| !f.is_empty()) {
                        return Some((
                            Ok::<_, std::convert::Infallible>(Bytes::from(first)),
                            (fake, rx, last, None, false),
                        ));
                    }
                    loop {
                        rx.borrow_and_update();
                        let started = std::time::Instant::now();
                        let out = {
                            let s = fake.lock();
                            if s.generation != generation {
                                Err(gone_event(last, s.oldest_rv))
                            } else if s.paused {
                                Ok(Vec::new())
                            } else {
                                let mut buf = Vec::new();
                                let from = last;
                                for c in s.log.iter().filter(|c| c.rv > from) {
                                    last = c.rv;
                                    if c.resource == resource
                                        && namespace.as_ref().is_none_or(|n| *n == c.namespace)
                                        && selected(&c.object, &terms)
                                    {
                                        let mut line = serde_json::to_vec(
                                            &json!({"type": c.kind, "object": c.object}),
                                        )
                                        .expect("json");
                                        line.push(b'\n');
                                        buf.extend(line);
                                    }
                                }
                                Ok(buf)
                            }
                        };
                        fake.add_busy(started);
                        match out {
                            Err(line) => return Some((Ok(line), (fake, rx, last, None, true))),
                            Ok(buf) if !buf.is_empty() => {
                                return Some((Ok(Bytes::from(buf)), (fake, rx, last, None, false)));
                            }
                            Ok(_) => {
                                if rx.changed().await.is_err() {
                                    return None;
                                }
                            }
                        }
                    }
                }
            },
        );
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            Body::from_stream(stream),
        )
            .into_response()
    }

    fn take_fault(&self, method: &str, path: &str) -> Option<FaultKind> {
        let mut s = self.lock();
        let f = s
            .faults
            .iter_mut()
            .find(|f| f.remaining > 0 && f.method == method && f.path == path)?;
        f.remaining -= 1;
        Some(f.kind.clone())
    }

    fn serve(
        &self,
        method: &str,
        t: Target,
        query: &BTreeMap<String, String>,
        headers: &HeaderMap,
        body: Value,
    ) -> Response {
        let now = (self.clock)();
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        match (method, &t.name) {
            ("GET", None) if watch => return self.watch(t, query),
            ("GET", None) => return self.list(&t, query, headers),
            _ => {}
        }
        let Some(namespace) = t.namespace.clone() else {
            return error(
                405,
                "MethodNotAllowed",
                "the fake serves named objects only in namespaces",
            );
        };
        let what = qualified(&t.resource);
        let response = {
            let mut s = self.lock();
            match (method, t.name.clone()) {
                ("GET", Some(name)) => {
                    match s
                        .objects
                        .get(&(t.resource.clone(), namespace, name.clone()))
                    {
                        Some(o) => json_response(200, o),
                        None => not_found(&what, &name),
                    }
                }
                ("POST", None) => {
                    let Some(name) = body["metadata"]["name"].as_str().map(String::from) else {
                        return error(422, "Invalid", "metadata.name: Required value");
                    };
                    let key = (t.resource.clone(), namespace, name.clone());
                    if s.objects.contains_key(&key) {
                        error(
                            409,
                            "AlreadyExists",
                            &format!("{what} \"{name}\" already exists"),
                        )
                    } else if dry_run(query, &body) {
                        json_response(201, &body)
                    } else {
                        let o = s.create(&key, body, now);
                        json_response(201, &o)
                    }
                }
                ("PUT", Some(name)) => {
                    let key = (t.resource.clone(), namespace, name.clone());
                    let Some(old) = s.objects.get(&key).cloned() else {
                        return not_found(&what, &name);
                    };
                    let Some(rv) = body["metadata"]["resourceVersion"].as_str() else {
                        return error(
                            422,
                            "Invalid",
                            &format!(
                                "{what} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
                            ),
                        );
                    };
                    if rv != old["metadata"]["resourceVersion"] {
                        conflict(&what, &name)
                    } else {
                        let mut new = body;
                        for k in ["uid", "creationTimestamp", "deletionTimestamp"] {
                            new["metadata"][k] = old["metadata"][k].clone();
                        }
                        if t.status {
                            let mut o = old.clone();
                            o["status"] = new["status"].clone();
                            new = o;
                        }
                        if dry_run(query, &new) {
                            json_response(200, &new)
                        } else {
                            let o = s.put(&key, new, "MODIFIED");
                            json_response(200, &o)
                        }
                    }
                }
                ("PATCH", Some(name)) => {
                    let key = (t.resource.clone(), namespace, name.clone());
                    let Some(old) = s.objects.get(&key).cloned() else {
                        return not_found(&what, &name);
                    };
                    let ct = headers
                        .get("content-type")
                        .and_then(|c| c.to_str().ok())
                        .unwrap_or_default();
                    if !ct.starts_with("application/merge-patch+json")
                        && !ct.starts_with("application/strategic-merge-patch+json")
                    {
                        return error(
                            415,
                            "UnsupportedMediaType",
                            &format!("the fake applies merge patches only, not {ct:?}"),
                        );
                    }
                    if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
                        && rv != old["metadata"]["resourceVersion"]
                    {
                        return conflict(&what, &name);
                    }
                    let mut new = old.clone();
                    if t.status {
                        merge_patch(&mut new["status"], &body["status"]);
                    } else {
                        let mut patch = body.clone();
                        if let Some(p) = patch.as_object_mut() {
                            p.remove("status");
                        }
                        merge_patch(&mut new, &patch);
                        for k in ["uid", "creationTimestamp", "name", "namespace"] {
                            new["metadata"][k] = old["metadata"][k].clone();
                        }
                    }
                    if dry_run(query, &body) {
                        json_response(200, &new)
                    } else {
                        let o = s.put(&key, new, "MODIFIED");
                        json_response(200, &o)
                    }
                }
                ("DELETE", Some(name)) => {
                    let key = (t.resource.clone(), namespace, name.clone());
                    let opts = delete_options(query, &body);
                    let Some(old) = s.objects.get(&key).cloned() else {
                        return not_found(&what, &name);
                    };
                    let uid = old["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(want) = &opts.uid
                        && *want != uid
                    {
                        return error(
                            409,
                            "Conflict",
                            &format!(
                                "Operation cannot be fulfilled on {what} \"{name}\": Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                            ),
                        );
                    }
                    if opts.dry_run {
                        // What the call would do, from a copy.
                        let mut copy = State {
                            rv: s.rv,
                            objects: s.objects.clone(),
                            ..State::default()
                        };
                        delete_with(&mut copy, &key, &old, &opts, now)
                    } else {
                        delete_with(&mut s, &key, &old, &opts, now)
                    }
                }
                _ => error(
                    405,
                    "MethodNotAllowed",
                    &format!("{method} is not served here"),
                ),
            }
        };
        self.notify();
        response
    }
}

/// DELETE of `key` (whose object is `old`) on `s`.
fn delete_with(
    s: &mut State,
    key: &Key,
    old: &Value,
    opts: &DeleteOptions,
    now: Timestamp,
) -> Response {
    let uid = old["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if key.0 == "jobs" {
        let policy = opts.propagation.as_deref().unwrap_or("Orphan");
        match policy {
            "Foreground" => {
                let mut o = old.clone();
                if o["metadata"]["deletionTimestamp"].is_null() {
                    let mut fins = o["metadata"]["finalizers"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if !fins.iter().any(|f| f == "foregroundDeletion") {
                        fins.push("foregroundDeletion".into());
                    }
                    o["metadata"]["finalizers"] = Value::Array(fins);
                    o["metadata"]["deletionTimestamp"] = k8s_time(now).into();
                    o["metadata"]["deletionGracePeriodSeconds"] = 0.into();
                    o = s.put(key, o, "MODIFIED");
                }
                for pod in s.owned_pods(&key.1, &uid) {
                    s.delete_object(&pod, None, now);
                }
                s.collect_garbage();
                json_response(200, &o)
            }
            "Background" | "Orphan" => {
                let pods = s.owned_pods(&key.1, &uid);
                let gone = s.delete_object(key, opts.grace, now);
                for pod in pods {
                    if policy == "Background" {
                        s.delete_object(&pod, None, now);
                    } else if let Some(mut p) = s.objects.get(&pod).cloned() {
                        if let Some(m) = p["metadata"].as_object_mut() {
                            m.remove("ownerReferences");
                        }
                        s.put(&pod, p, "MODIFIED");
                    }
                }
                s.collect_garbage();
                if s.objects.contains_key(key) {
                    json_response(200, &gone.unwrap_or_default())
                } else {
                    json_response(
                        200,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Success", "details": {"name": key.2, "group": "batch", "kind": "jobs", "uid": uid}}),
                    )
                }
            }
            other => error(
                400,
                "BadRequest",
                &format!("unknown propagationPolicy {other:?}"),
            ),
        }
    } else {
        let o = s.delete_object(key, opts.grace, now).unwrap_or_default();
        s.collect_garbage();
        json_response(200, &o)
    }
}

fn dry_run(query: &BTreeMap<String, String>, body: &Value) -> bool {
    query.get("dryRun").is_some_and(|d| d == "All")
        || body["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "All"))
}

fn delete_options(query: &BTreeMap<String, String>, body: &Value) -> DeleteOptions {
    DeleteOptions {
        propagation: body["propagationPolicy"]
            .as_str()
            .map(String::from)
            .or_else(|| query.get("propagationPolicy").cloned()),
        uid: body["preconditions"]["uid"].as_str().map(String::from),
        grace: body["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok())),
        dry_run: dry_run(query, body),
    }
}

fn not_found(what: &str, name: &str) -> Response {
    error(404, "NotFound", &format!("{what} \"{name}\" not found"))
}

fn conflict(what: &str, name: &str) -> Response {
    error(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
    )
}

/// The ERROR event a watch from `rv` gets once `oldest` is the oldest version kept.
fn gone_event(rv: u64, oldest: u64) -> Bytes {
    let mut st = status(
        410,
        "Expired",
        &format!("too old resource version: {rv} ({oldest})"),
    );
    st["reason"] = "Expired".into();
    let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": st})).expect("json");
    line.push(b'\n');
    Bytes::from(line)
}

async fn handle(AxumState(fake): AxumState<Fake>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let headers = req.headers().clone();
    let bytes = axum::body::to_bytes(req.into_body(), 4 << 20)
        .await
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let response = handle_read(&fake, method, path, path_and_query, query, headers, &bytes);
    fake.add_busy(started);
    match response {
        Ok(r) => r,
        Err(()) => futures::future::pending().await,
    }
}

/// [`handle`] once the body is read: the response, or Err for a request never to be answered.
fn handle_read(
    fake: &Fake,
    method: String,
    path: String,
    path_and_query: String,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    bytes: &Bytes,
) -> Result<Response, ()> {
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                return Ok(error(
                    400,
                    "BadRequest",
                    &format!("the body is not JSON: {e}"),
                ));
            }
        }
    };
    let now = (fake.clock)();
    {
        let mut state = fake.lock();
        state.times.push(now);
        state.requests.push(Seen {
            method: method.clone(),
            path: path_and_query,
            query: query.clone(),
            body: body.clone(),
        });
    }
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let fault_method = if method == "GET" && watch {
        "WATCH"
    } else {
        method.as_str()
    };
    match fake.take_fault(fault_method, &path) {
        Some(FaultKind::Hang) => return Err(()),
        Some(FaultKind::Status { code, retry_after }) => {
            let reason = match code {
                429 => "TooManyRequests",
                500 => "InternalError",
                503 => "ServiceUnavailable",
                504 => "Timeout",
                _ => "Unknown",
            };
            let mut st = status(code, reason, "injected by the test");
            let mut resp = Response::builder()
                .status(code)
                .header("content-type", "application/json");
            if let Some(secs) = retry_after {
                st["details"] = json!({"retryAfterSeconds": secs});
                resp = resp.header("retry-after", secs.to_string());
            }
            return Ok(resp
                .body(Body::from(serde_json::to_vec(&st).expect("json")))
                .expect("response"));
        }
        None => {}
    }
    let Some(target) = parse_path(&path) else {
        return Ok(error(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ));
    };
    Ok(fake.serve(&method, target, &query, &headers, body))
}
