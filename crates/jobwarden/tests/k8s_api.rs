//! The job API of `run --runtime kubernetes`, served as `run` serves it (the health router
//! with the job API merged in) on a real listener, over a real SQLite store (a file in a temp
//! dir) filled by the Kubernetes reconciler: the reads return the stored Kubernetes jobs;
//! heartbeats move `last_heartbeat` in the store (404 for an unknown job, 400 for a path that
//! does not decode); the token guards everything but heartbeats and health; submit, cancel and
//! the orphan routes answer 501 and write nothing; `/readyz` says whether this replica leads.
//! The reads and heartbeats run against PostgreSQL too (`DATABASE_URL`; see `tests/common`).

mod common;
mod k8s_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jobwarden::config::Config;
use jobwarden::engine::decide::Policy;
use jobwarden::kubernetes::api::{ApiState, router};
use jobwarden::kubernetes::cli::health_router;
use jobwarden::kubernetes::observe::Scope;
use jobwarden::kubernetes::reconcile::Reconciler;
use jobwarden::model::{JobId, RuntimeKind, Stage, Timestamp};
use jobwarden::runtime::kubernetes::actions::Actions;
use jobwarden::store::{AuditQuery, JobFilter, Store};
use k8s_support::*;
use serde_json::{Value, json};

const TOKEN: &str = "k8s-api-test-token-0123456789";

fn t(s: &str) -> Timestamp {
    format!("2026-11-28T{s}Z").parse().expect("ts")
}

/// [`job_json`] as another Job: id `j-43`, finished (SuccessCriteriaMet and Complete).
fn finished_job_json() -> Value {
    let text = job_json()
        .to_string()
        .replace("j-42", "j-43")
        .replace("build-42", "build-43")
        .replace(JOB_UID, "0c7b5a8e-1d2f-4e3a-9b6c-7d8e9f0a1b2c");
    let mut v: Value = serde_json::from_str(&text).expect("json");
    v["status"] = json!({
        "startTime": "2026-11-28T10:00:01Z", "completionTime": "2026-11-28T10:20:00Z",
        "active": 0, "ready": 0, "terminating": 0, "succeeded": 1,
        "uncountedTerminatedPods": {},
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True",
             "lastTransitionTime": "2026-11-28T10:20:00Z", "lastProbeTime": "2026-11-28T10:20:00Z",
             "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods"},
            {"type": "Complete", "status": "True",
             "lastTransitionTime": "2026-11-28T10:20:00Z", "lastProbeTime": "2026-11-28T10:20:00Z",
             "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods"}
        ]
    });
    v
}

/// A Kubernetes-mode server over a store holding `j-42` (running) and `j-43` (finished),
/// both written by the reconciler (dry-run: no request reaches the scripted API server).
struct Server {
    base: String,
    store: Store,
    ready: Arc<AtomicBool>,
    leading: tokio::sync::watch::Sender<bool>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _pg: Option<common::PgDb>,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

async fn server(token: Option<&str>) -> Server {
    server_on(token, None).await
}

/// [`server`] on SQLite (a file in a temp dir), or on the PostgreSQL database `pg`.
async fn server_on(token: Option<&str>, pg: Option<common::PgDb>) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = match &pg {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", dir.path().join("jobwarden.db").display()),
    };
    let store = Store::open(&url).await.expect("store");
    let (client, _server) = scripted(vec![]);
    let config = Config::default();
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let policy = Policy::from_config(&config);
    let r = Reconciler::new(
        config,
        store.clone(),
        Actions::new(client, scope, true, "jw-0"),
    );
    for v in [job_json(), finished_job_json()] {
        r.reconcile(&job(v), &[], t("10:30:00"))
            .await
            .expect("reconcile");
    }
    let ready = Arc::new(AtomicBool::new(true));
    let (leading, leading_rx) = tokio::sync::watch::channel(false);
    // As `run` builds it.
    let app = health_router(ready.clone(), r.metrics(), leading_rx).merge(router(ApiState::new(
        store.clone(),
        policy,
        token.map(str::to_owned),
    )));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let serving = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        base,
        store,
        ready,
        leading,
        http: reqwest::Client::new(),
        _dir: dir,
        _pg: pg,
        serving,
    }
}

impl Server {
    /// (status, body) of `method path`, with `token` as bearer token when given.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("an answer");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.call("GET", path, None, None).await;
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        (status, v)
    }

    /// Everything the store holds, to show that a request wrote nothing.
    async fn snapshot(&self) -> String {
        let jobs = self
            .store
            .list_jobs(&JobFilter::default())
            .await
            .expect("jobs");
        let audit = self
            .store
            .query_audit(&AuditQuery::default())
            .await
            .expect("audit");
        format!("{jobs:?}\n{audit:?}")
    }
}

/// A 4xx/5xx body is `{"error": "<non-empty>"}`; returns the message.
fn error_of(status: u16, text: &str) -> String {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
    let msg = v["error"].as_str().unwrap_or_default().to_owned();
    assert!(!msg.is_empty(), "{status}: no error message: {text}");
    msg
}

#[tokio::test]
async fn reads_return_the_stored_kubernetes_jobs() {
    reads_return_the_stored_kubernetes_jobs_on(server(None).await).await;
}

#[tokio::test]
async fn reads_return_the_stored_kubernetes_jobs_postgres() {
    if let Some(db) = common::PgDb::create() {
        reads_return_the_stored_kubernetes_jobs_on(server_on(None, Some(db)).await).await;
    }
}

async fn reads_return_the_stored_kubernetes_jobs_on(s: Server) {
    let stored = s
        .store
        .list_jobs(&JobFilter::default())
        .await
        .expect("jobs");
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|j| j.runtime == RuntimeKind::Kubernetes));

    let (status, jobs) = s.get("/v1/jobs").await;
    assert_eq!(status, 200, "{jobs}");
    let mut ids: Vec<&str> = jobs
        .as_array()
        .expect("array")
        .iter()
        .map(|j| j["id"].as_str().expect("id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["j-42", "j-43"]);

    let (status, j) = s.get("/v1/jobs/j-42").await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["stage"], "running");
    assert_eq!(j["name"], "build-42");
    assert_eq!(j["org"], "acme");
    assert_eq!(j["effective_timeout_seconds"], 3600);
    assert_eq!(j["deadline"], "2026-11-28T11:00:01Z");
    // The next step under the policy: the warning, 10 min before the deadline.
    assert_eq!(j["next_step"]["step"], "warn");
    assert_eq!(j["next_step"]["due_at"], "2026-11-28T10:50:01Z");
    let (status, j) = s.get("/v1/jobs/j-43").await;
    assert_eq!(status, 200, "{j}");
    let finished = s
        .store
        .get_job(&JobId::parse("j-43").expect("id"))
        .await
        .expect("get")
        .expect("stored");
    assert!(!finished.stage.is_active(), "{:?}", finished.stage);
    assert_eq!(
        j["stage"],
        serde_json::to_value(finished.stage).expect("stage")
    );

    let (status, e) = s.get("/v1/jobs/j-44").await;
    assert_eq!(status, 404, "{e}");
    assert_eq!(e["error"], "no job with id j-44");

    // The audit log: the reconciler's dry-run rows for j-42, filtered as in the local daemon.
    let (status, rows) = s.get("/v1/audit?job=j-42").await;
    assert_eq!(status, 200, "{rows}");
    let rows = rows.as_array().expect("array");
    let stored = s
        .store
        .query_audit(&AuditQuery {
            job_id: Some("j-42".into()),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert!(
        !stored.is_empty(),
        "the reconciler audited nothing for j-42"
    );
    assert_eq!(rows.len(), stored.len());
    assert!(rows.iter().all(|r| r["job_id"] == "j-42"), "{rows:?}");
    let (status, e) = s.get("/v1/audit?action=explode").await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("`action`")),
        "{e}"
    );
    let (status, e) = s.get("/v1/audit?jobb=j-42").await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("jobb")),
        "{e}"
    );

    // The plan has the running job (its next step, or the step due now).
    let (status, plan) = s.get("/v1/plan").await;
    assert_eq!(status, 200, "{plan}");
    let entry = plan
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["job_id"] == "j-42")
        .unwrap_or_else(|| panic!("no j-42 in {plan}"));
    assert_eq!(entry["stage"], "running");
    assert!(entry["action"].is_string(), "{entry}");
}

#[tokio::test]
async fn a_heartbeat_moves_last_heartbeat_in_the_store() {
    a_heartbeat_moves_last_heartbeat_in_the_store_on(server(None).await).await;
}

#[tokio::test]
async fn a_heartbeat_moves_last_heartbeat_in_the_store_postgres() {
    if let Some(db) = common::PgDb::create() {
        a_heartbeat_moves_last_heartbeat_in_the_store_on(server_on(None, Some(db)).await).await;
    }
}

async fn a_heartbeat_moves_last_heartbeat_in_the_store_on(s: Server) {
    let id = JobId::parse("j-42").expect("id");
    let before = s.store.get_job(&id).await.expect("get").expect("stored");
    assert_eq!(before.last_heartbeat, None);

    let earliest = jobwarden::clock::now();
    // jobwarden-init's request: its body names the job; the URL is what counts.
    let (status, text) = s
        .call(
            "POST",
            "/v1/jobs/j-42/heartbeat",
            None,
            Some(json!({"job_id": "j-42"})),
        )
        .await;
    let latest = jobwarden::clock::now();
    assert_eq!(status, 204, "{text}");
    let after = s.store.get_job(&id).await.expect("get").expect("stored");
    let hb = after.last_heartbeat.expect("a heartbeat recorded");
    assert!(
        earliest <= hb && hb <= latest,
        "{hb} not in [{earliest}, {latest}]"
    );
    // Only the heartbeat moved: not the deadline, not the stage.
    assert_eq!(
        (after.deadline, after.stage, &after.steps),
        (before.deadline, before.stage, &before.steps)
    );
    let (_, j) = s.get("/v1/jobs/j-42").await;
    assert_eq!(
        j["last_heartbeat"],
        serde_json::to_value(hb).expect("timestamp")
    );

    // A finished job's heartbeat is taken, as the local daemon takes it.
    let (status, text) = s.call("POST", "/v1/jobs/j-43/heartbeat", None, None).await;
    assert_eq!(status, 204, "{text}");
    let finished = s
        .store
        .get_job(&JobId::parse("j-43").expect("id"))
        .await
        .expect("get")
        .expect("stored");
    assert!(finished.last_heartbeat.is_some());

    // Unknown: 404, and no job appears. Not a job id (a bad escape is kept as is): 404 too,
    // as in the local daemon (no job can have it). A path that does not decode to UTF-8: 400.
    let snapshot = s.snapshot().await;
    for (path, want) in [
        ("/v1/jobs/j-99/heartbeat", 404),
        ("/v1/jobs/not%20an%20id!/heartbeat", 404),
        ("/v1/jobs/%FF%FE/heartbeat", 400),
        ("/v1/jobs/%zz/heartbeat", 404),
    ] {
        let (status, text) = s.call("POST", path, None, None).await;
        assert_eq!(status, want, "{path}: {text}");
        let msg = error_of(status, &text);
        if path.contains("j-99") {
            assert_eq!(msg, "no job with id j-99");
        }
    }
    assert_eq!(s.snapshot().await, snapshot, "a refused heartbeat wrote");
    assert_eq!(
        s.store
            .get_job(&JobId::parse("j-99").expect("id"))
            .await
            .expect("get"),
        None
    );
}

#[tokio::test]
async fn the_token_guards_reads_but_not_heartbeats_or_health() {
    let s = server(Some(TOKEN)).await;
    for path in ["/v1/jobs", "/v1/jobs/j-42", "/v1/audit", "/v1/plan"] {
        for given in [None, Some("wrong-token-wrong-token")] {
            let (status, text) = s.call("GET", path, given, None).await;
            assert_eq!(status, 401, "{path} with {given:?}: {text}");
            assert!(error_of(status, &text).contains("bearer token"), "{text}");
        }
        let (status, text) = s.call("GET", path, Some(TOKEN), None).await;
        assert_eq!(status, 200, "{path}: {text}");
    }
    // The refused routes are behind the token too: 401 first, then the 501.
    let (status, text) = s.call("POST", "/v1/jobs/j-42/cancel", None, None).await;
    assert_eq!(status, 401, "{text}");
    let (status, text) = s
        .call("POST", "/v1/jobs/j-42/cancel", Some(TOKEN), None)
        .await;
    assert_eq!(status, 501, "{text}");

    let (status, text) = s.call("POST", "/v1/jobs/j-42/heartbeat", None, None).await;
    assert_eq!(status, 204, "heartbeats need no token: {text}");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, text) = s.call("GET", path, None, None).await;
        assert_eq!(status, 200, "{path} needs no token: {text}");
    }
}

#[tokio::test]
async fn submit_cancel_and_orphans_answer_501_and_write_nothing() {
    let s = server(None).await;
    let snapshot = s.snapshot().await;
    let submit = json!({"command": ["sleep", "60"], "timeout": "1h"});
    for (method, path, body, says) in [
        ("POST", "/v1/jobs", Some(submit), "kubectl apply"),
        ("POST", "/v1/jobs/j-42/cancel", None, "kubectl delete job"),
        ("POST", "/v1/jobs/j-99/cancel", None, "kubectl delete job"),
        ("GET", "/v1/orphans", None, "orphan pass"),
        ("POST", "/v1/orphans/clean", None, "orphan pass"),
    ] {
        let (status, text) = s.call(method, path, None, body).await;
        assert_eq!(status, 501, "{method} {path}: {text}");
        let msg = error_of(status, &text);
        assert!(msg.contains("Kubernetes mode"), "{msg}");
        assert!(msg.contains(says), "{method} {path}: {msg}");
    }
    assert_eq!(
        s.snapshot().await,
        snapshot,
        "a refused request changed the store"
    );
    let j42 = s
        .store
        .get_job(&JobId::parse("j-42").expect("id"))
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(j42.stage, Stage::Running, "cancel must not end the job");

    // Unknown routes and wrong methods answer in the JSON error shape.
    let (status, text) = s.call("GET", "/v1/nothing-here", None, None).await;
    assert_eq!(status, 404, "{text}");
    error_of(status, &text);
    let (status, text) = s.call("DELETE", "/v1/jobs/j-42", None, None).await;
    assert_eq!(status, 405, "{text}");
    error_of(status, &text);
    assert_eq!(s.snapshot().await, snapshot);
}

#[tokio::test]
async fn readyz_says_whether_this_replica_leads() {
    let s = server(None).await;
    let (status, text) = s.call("GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "a ready standby is ready: {text}");
    assert_eq!(
        text,
        "ready: Jobs and Pods listed; standby (another replica leads)\n"
    );
    s.leading.send(true).expect("send");
    let (status, text) = s.call("GET", "/readyz", None, None).await;
    assert_eq!(
        (status, text.as_str()),
        (200, "ready: Jobs and Pods listed; leading\n")
    );
    s.ready.store(false, Ordering::Relaxed);
    let (status, text) = s.call("GET", "/readyz", None, None).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.starts_with("not ready: waiting for the first listing")
            && text.ends_with("; leading\n"),
        "{text}"
    );
}
