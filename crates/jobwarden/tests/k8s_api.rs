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

use jobwarden::api_types::SubmitRequest;
use jobwarden::config::Config;
use jobwarden::kubernetes::api::{ApiState, router};
use jobwarden::kubernetes::cli::health_router;
use jobwarden::kubernetes::manifest::{JobRequest, render_job, to_json_value};
use jobwarden::kubernetes::observe::Scope;
use jobwarden::kubernetes::orphans::OrphanPass;
use jobwarden::kubernetes::reconcile::Reconciler;
use jobwarden::model::{AuditAction, JobId, RuntimeKind, Stage, Timestamp};
use jobwarden::runtime::kubernetes::actions::Actions;
use jobwarden::store::{AuditQuery, JobFilter, Store};
use k8s_support::fake::Fake;
use k8s_support::wiring::{self, JOB_PATH, NS_JOBS, assert_in_api_calls};
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
    fake: Fake,
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
    let fake = Fake::new(|| t("10:30:00"));
    let mut config = Config::default();
    config.kubernetes.namespaces = vec!["flowforge".into()];
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    // The records, as a dry-run reconciler writes them (it sends nothing).
    let r = Reconciler::new(
        config.clone(),
        store.clone(),
        Actions::new(fake.client(), scope.clone(), true, "jw-0"),
    );
    for v in [job_json(), finished_job_json()] {
        fake.insert(v.clone());
        r.reconcile(&job(v), &[], t("10:30:00"))
            .await
            .expect("reconcile");
    }
    let ready = Arc::new(AtomicBool::new(true));
    let (leading, leading_rx) = tokio::sync::watch::channel(false);
    // As `run` builds it.
    let api = ApiState::new(
        store.clone(),
        config.clone(),
        Actions::new(fake.client(), scope, false, "jw-0"),
        OrphanPass::from_config(fake.client(), &config, store.clone(), false),
        token.map(str::to_owned),
        r.events(),
    );
    let app = health_router(ready.clone(), r.metrics(), leading_rx).merge(router(api));
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
        fake,
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
    // The routes that act are behind the token too: 401 first, and nothing reaches the
    // cluster; with the token, the answer.
    for (method, path) in [
        ("POST", "/v1/jobs/j-42/cancel"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/orphans"),
        ("POST", "/v1/orphans/clean"),
    ] {
        let (status, text) = s.call(method, path, None, None).await;
        assert_eq!(status, 401, "{method} {path}: {text}");
    }
    assert!(s.fake.requests().is_empty(), "{:?}", s.fake.requests());
    let (status, text) = s
        .call("POST", "/v1/jobs/j-99/cancel", Some(TOKEN), None)
        .await;
    assert_eq!(status, 404, "{text}");

    let (status, text) = s.call("POST", "/v1/jobs/j-42/heartbeat", None, None).await;
    assert_eq!(status, 204, "heartbeats need no token: {text}");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, text) = s.call("GET", path, None, None).await;
        assert_eq!(status, 200, "{path} needs no token: {text}");
    }
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_in_the_json_error_shape() {
    let s = server(None).await;
    let snapshot = s.snapshot().await;
    let (status, text) = s.call("GET", "/v1/nothing-here", None, None).await;
    assert_eq!(status, 404, "{text}");
    error_of(status, &text);
    let (status, text) = s.call("DELETE", "/v1/jobs/j-42", None, None).await;
    assert_eq!(status, 405, "{text}");
    error_of(status, &text);
    assert_eq!(s.snapshot().await, snapshot);
    assert!(s.fake.requests().is_empty(), "{:?}", s.fake.requests());
}

/// The web console is served in Kubernetes mode too, from the same routes: the stored Jobs,
/// their pages, the reports, the orphan pass's listing; reading changes nothing, and the
/// cancel button asks for the cancel as the API does (the annotation).
#[tokio::test]
async fn the_console_serves_the_kubernetes_jobs() {
    let s = server(Some(TOKEN)).await;
    let snapshot = s.snapshot().await;
    for path in [
        "/",
        "/jobs/j-42",
        "/audit?job=j-42",
        "/queue",
        "/policy",
        "/reclaimed",
    ] {
        let (status, text) = s.call("GET", path, None, None).await;
        assert_eq!(status, 200, "{path} needs no token: {text}");
        assert!(text.contains("runtime: kubernetes"), "{path}: {text}");
        assert!(!text.contains(TOKEN), "{path} shows the token");
    }
    let (_, jobs) = s.call("GET", "/", None, None).await;
    assert!(
        jobs.contains("id=\"job-j-42\"") && jobs.contains("build-42"),
        "{jobs}"
    );
    let (_, page) = s.call("GET", "/jobs/j-42", None, None).await;
    assert!(
        page.contains("Cancel this job") && page.contains("cancel-requested"),
        "{page}"
    );
    // The orphans page is one orphan pass (listings only) and says what is a candidate here.
    let (status, page) = s.call("GET", "/orphans", None, None).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("orphan_min_age") && page.contains("No orphans."),
        "{page}"
    );
    assert!(
        s.fake.requests().iter().all(|r| r.method == "GET"),
        "{:?}",
        s.fake.requests()
    );
    assert_eq!(s.snapshot().await, snapshot, "reading changed the store");
    // The cancel button without the token: refused, nothing asked of the cluster.
    let before = s.fake.requests().len();
    let (status, page) = s.call("POST", "/jobs/j-42/cancel", None, None).await;
    assert_eq!(status, 401, "{page}");
    assert_eq!(s.fake.requests().len(), before);
    // With it: the Job annotated as by the API; no leader here, so the page says requested.
    let (status, page) = s.call("POST", "/jobs/j-42/cancel", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Cancel requested"), "{page}");
    let lines: Vec<String> = s.fake.requests()[before..].iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            format!("GET {JOB_PATH}"),
            format!("PATCH {JOB_PATH}?fieldManager=jobwarden")
        ],
        "{lines:?}"
    );
    let job = s.fake.get("jobs", "flowforge", "build-42").expect("job");
    assert!(
        job["metadata"]["annotations"]["flowforge.io/cancel-requested"].is_string(),
        "{job}"
    );
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

// ----- The routes that act in Kubernetes mode: submit, cancel, orphans -----

/// The config of [`server`]: the one watched namespace `flowforge`.
fn api_config() -> Config {
    let mut config = Config::default();
    config.kubernetes.namespaces = vec!["flowforge".into()];
    config
}

#[tokio::test]
async fn submit_creates_the_job_manifest_job_renders_and_stores_it() {
    let s = server(None).await;
    let body = json!({"command": ["make", "test"], "image": "ghcr.io/flowforge/runner:1",
                      "org": "acme", "type": "build", "timeout": "1h",
                      "heartbeat_timeout": "2m"});
    let (status, text) = s.call("POST", "/v1/jobs", None, Some(body.clone())).await;
    assert_eq!(status, 201, "{text}");
    let view: Value = serde_json::from_str(&text).expect("json");
    let id = view["id"].as_str().expect("id").to_owned();
    // One call: the POST, in the one watched namespace, of exactly the Job `manifest job`
    // renders for the same request and id.
    let seen = s.fake.requests();
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(lines, ["POST /apis/batch/v1/namespaces/flowforge/jobs"]);
    assert_in_api_calls(&seen);
    let config = api_config();
    let mut req: SubmitRequest = serde_json::from_value(body).expect("request");
    req.namespace = Some("flowforge".into());
    let job_id = JobId::parse(&id).expect("id");
    let expected = render_job(
        &JobRequest::from_submit(req, job_id.clone(), &config.kubernetes.api_url),
        &config,
    )
    .expect("renders");
    assert_eq!(seen[0].body, to_json_value(&expected.job).expect("json"));
    let env = &seen[0].body["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.to_string().contains(&format!(
            "http://jobwarden.jobwarden.svc:7800/v1/jobs/{id}/heartbeat"
        )),
        "heartbeats go to [kubernetes] api_url: {env}"
    );
    // Stored at once: `job show` finds it before the leader's watch did.
    let (status, j) = s.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(
        (
            &j["namespace"],
            &j["org"],
            &j["type"],
            &j["effective_timeout_seconds"]
        ),
        (
            &json!("flowforge"),
            &json!("acme"),
            &json!("build"),
            &json!(3600)
        )
    );
    let name = format!("flowforge-{id}");
    let created = s.fake.get("jobs", "flowforge", &name).expect("created");
    assert_eq!(created["metadata"]["labels"]["job-id"], json!(id));
    // The leader's first sighting takes the record over as a new run.
    let r = Reconciler::new(
        config.clone(),
        s.store.clone(),
        Actions::new(
            s.fake.client(),
            Scope::new(&config.kubernetes, &config.annotations.prefix),
            true,
            "jw-0",
        ),
    );
    r.reconcile(&job(created), &[], t("10:30:01"))
        .await
        .expect("reconcile");
    let stored = s
        .store
        .get_job(&job_id)
        .await
        .expect("get")
        .expect("stored");
    assert!(stored.spec.get("submitted").is_none(), "{}", stored.spec);
    assert_eq!(stored.timeout, std::time::Duration::from_secs(3600));
}

#[tokio::test]
async fn a_bad_submit_names_the_field_and_creates_nothing() {
    let s = server(None).await;
    let snapshot = s.snapshot().await;
    let ok = json!({"command": ["true"], "image": "img:1"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases = [
        (json!({"command": ["true"]}), "field `image`"),
        (with("image", json!("two words")), "field `image`"),
        (with("imagee", json!("img:2")), "imagee"),
        (with("org", json!("../x")), "field `org`"),
        (with("type", json!("-build")), "field `type`"),
        (with("namespace", json!("other")), "field `namespace`"),
        (with("namespace", json!("kube-system")), "field `namespace`"),
        (with("name", json!("Bad_Name")), "field `name`"),
        (with("timeout", json!("0s")), "field `timeout`"),
        (
            with("heartbeat_timeout", json!("0s")),
            "field `heartbeat_timeout`",
        ),
        (with("command", json!([])), "field `command`"),
    ];
    for (body, says) in cases {
        let (status, text) = s.call("POST", "/v1/jobs", None, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {text}");
        let msg = error_of(status, &text);
        assert!(msg.contains(says), "{body}: want {says:?} in {msg}");
    }
    assert!(s.fake.requests().is_empty(), "{:?}", s.fake.requests());
    assert!(s.fake.all("jobs").len() == 2, "{:?}", s.fake.names("jobs"));
    assert_eq!(
        s.snapshot().await,
        snapshot,
        "a refused submit changed the store"
    );
}

#[tokio::test]
async fn what_the_api_server_refuses_is_not_stored() {
    let s = server(None).await;
    let snapshot = s.snapshot().await;
    let mut taken = job_json();
    taken["metadata"]["name"] = "taken".into();
    taken["metadata"]["uid"] = "uid-taken".into();
    taken["metadata"]["labels"]["job-id"] = "j-taken".into();
    s.fake.insert(taken);
    let body = json!({"command": ["true"], "image": "img:1", "name": "taken"});
    let (status, text) = s.call("POST", "/v1/jobs", None, Some(body)).await;
    assert_eq!(status, 409, "{text}");
    assert!(error_of(status, &text).contains("already exists"), "{text}");
    let path = "/apis/batch/v1/namespaces/flowforge/jobs";
    for (code, want) in [(403, 502), (503, 503), (422, 400)] {
        s.fake.fail("POST", path, code, None, 1);
        let body = json!({"command": ["true"], "image": "img:1"});
        let (status, text) = s.call("POST", "/v1/jobs", None, Some(body)).await;
        assert_eq!(status, want, "API server {code}: {text}");
        error_of(status, &text);
    }
    assert_eq!(s.fake.names("jobs").len(), 3, "{:?}", s.fake.names("jobs"));
    assert_eq!(s.snapshot().await, snapshot, "a Job not created was stored");
}

#[tokio::test]
async fn a_cancel_annotates_the_job_and_the_leader_soft_kills_it() {
    let s = server(None).await;
    let id = JobId::parse("j-42").expect("id");
    let read_rv =
        s.fake.get("jobs", "flowforge", "build-42").expect("job")["metadata"]["resourceVersion"]
            .clone();
    // No leader here: the request is on the Job, the answer 202 after the wait.
    let (status, text) = s.call("POST", "/v1/jobs/j-42/cancel", None, None).await;
    assert_eq!(status, 202, "{text}");
    let view: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(view["stage"], "running", "{view}");
    let seen = s.fake.requests();
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            format!("GET {JOB_PATH}"),
            format!("PATCH {JOB_PATH}?fieldManager=jobwarden")
        ]
    );
    assert_in_api_calls(&seen);
    let patch = &seen[1].body;
    assert_eq!(
        patch["metadata"]["resourceVersion"], read_rv,
        "the PATCH carries the resourceVersion it read: {patch}"
    );
    let job_now = s.fake.get("jobs", "flowforge", "build-42").expect("job");
    let requested = job_now["metadata"]["annotations"]["flowforge.io/cancel-requested"]
        .as_str()
        .expect("annotated")
        .to_owned();
    assert!(
        requested.parse::<Timestamp>().is_ok(),
        "an RFC 3339 time: {requested}"
    );
    // Nothing ended by the request itself: no deadline patched, the record still running.
    assert!(
        job_now["spec"]["activeDeadlineSeconds"].is_null(),
        "{job_now}"
    );
    let audit = s
        .store
        .query_audit(&AuditQuery {
            job_id: Some("j-42".into()),
            action: Some(AuditAction::Cancel),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(audit.len(), 1, "{audit:#?}");
    assert_eq!(
        (
            audit[0].initiated_by.as_str(),
            audit[0].success,
            audit[0].dry_run
        ),
        ("user", true, false)
    );
    // The leader sees the annotation: the soft kill, for the reason "cancelled".
    let config = api_config();
    let leader = Reconciler::new(
        config.clone(),
        s.store.clone(),
        Actions::new(
            s.fake.client(),
            Scope::new(&config.kubernetes, &config.annotations.prefix),
            false,
            "jw-0",
        ),
    );
    leader
        .reconcile(&job(job_now), &[], t("10:30:05"))
        .await
        .expect("reconcile");
    let stored = s.store.get_job(&id).await.expect("get").expect("stored");
    assert_eq!(stored.stage, Stage::Terminating);
    let soft = stored
        .steps
        .iter()
        .find(|st| st.step == jobwarden::model::Step::SoftKill)
        .expect("soft kill recorded");
    assert_eq!(soft.at, t("10:30:05"));
    assert!(
        stored
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("cancelled")),
        "{:?}",
        stored.reason
    );
    let killed = s.fake.get("jobs", "flowforge", "build-42").expect("job");
    assert_eq!(killed["spec"]["activeDeadlineSeconds"], 1, "{killed}");
    // Again: the soft kill is recorded, so 200 at once and nothing more sent.
    let before = s.fake.requests().len();
    let (status, text) = s.call("POST", "/v1/jobs/j-42/cancel", None, None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(s.fake.requests().len(), before);
}

#[tokio::test]
async fn a_cancel_of_what_is_not_running_touches_nothing() {
    let s = server(None).await;
    let (status, text) = s.call("POST", "/v1/jobs/j-99/cancel", None, None).await;
    assert_eq!(status, 404, "{text}");
    let (status, text) = s.call("POST", "/v1/jobs/j-43/cancel", None, None).await;
    assert_eq!(status, 409, "a finished job: {text}");
    assert!(error_of(status, &text).contains("not running"), "{text}");
    assert!(s.fake.requests().is_empty(), "{:?}", s.fake.requests());
    // The Job gone from the cluster (the record not settled yet): 409, no PATCH.
    s.fake.remove("jobs", "flowforge", "build-42");
    let (status, text) = s.call("POST", "/v1/jobs/j-42/cancel", None, None).await;
    assert_eq!(status, 409, "{text}");
    assert!(error_of(status, &text).contains("gone"), "{text}");
    // A Job of that name that is another job's: left alone.
    let mut other = job_json();
    other["metadata"]["labels"]["job-id"] = "j-other".into();
    other["metadata"]["uid"] = "uid-other".into();
    s.fake.insert(other);
    let (status, text) = s.call("POST", "/v1/jobs/j-42/cancel", None, None).await;
    assert_eq!(status, 409, "{text}");
    assert!(
        s.fake.mutations().is_empty(),
        "nothing may change: {:?}",
        s.fake.mutations()
    );
}

#[tokio::test]
async fn orphans_are_reported_and_cleaned_on_request_never_a_live_jobs_objects() {
    let s = server(None).await;
    let mut orphan = pod_json("orphan-a", "uid-orphan", "Running");
    orphan["metadata"]["labels"] = json!({"job-id": "j-gone"});
    orphan["metadata"]["ownerReferences"] = json!([]);
    orphan["metadata"]["finalizers"] = json!([]);
    s.fake.insert(orphan);
    // j-42's pod: its Job is there.
    let mut live = pod_json("build-42-a", "uid-live", "Running");
    live["metadata"]["finalizers"] = json!([]);
    s.fake.insert(live);

    let (status, r) = s.get("/v1/orphans").await;
    assert_eq!(status, 200, "{r}");
    let found: Vec<(&str, &str)> = r["orphans"]
        .as_array()
        .expect("orphans")
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().expect("kind"),
                o["name"].as_str().expect("name"),
            )
        })
        .collect();
    assert_eq!(found, [("pod", "flowforge/orphan-a")], "{r}");
    assert_eq!(
        (r["deleted"].as_u64(), r["deferred"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(s.fake.mutations().is_empty(), "a report deletes nothing");
    assert_in_api_calls(&s.fake.requests());
    // The console's page is the same pass: the orphan with why, never the live Job's pod.
    let why = r["orphans"][0]["why"].as_str().expect("why").to_owned();
    let (status, page) = s.call("GET", "/orphans", None, None).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("flowforge/orphan-a") && page.contains(&why),
        "{why}: {page}"
    );
    assert!(!page.contains("build-42-a"), "{page}");
    assert!(s.fake.mutations().is_empty(), "the page deletes nothing");

    // The Job listing fails: fail closed, nothing deleted.
    s.fake.fail("GET", NS_JOBS, 500, None, 1);
    let (status, text) = s.call("POST", "/v1/orphans/clean", None, None).await;
    assert_eq!(status, 200, "{text}");
    let r: Value = serde_json::from_str(&text).expect("json");
    assert!(
        r["skipped"][0].as_str().is_some_and(|m| m.contains("Jobs")),
        "{r}"
    );
    assert_eq!(r["deleted"], 0, "{r}");
    assert!(s.fake.mutations().is_empty(), "{:?}", s.fake.mutations());

    let (status, text) = s.call("POST", "/v1/orphans/clean", None, None).await;
    assert_eq!(status, 200, "{text}");
    let r: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(r["deleted"], 1, "{r}");
    let deletes: Vec<Seen> = s.fake.mutations();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(
        deletes[0].line(),
        "DELETE /api/v1/namespaces/flowforge/pods/orphan-a"
    );
    assert_eq!(deletes[0].body["preconditions"]["uid"], "uid-orphan");
    assert_eq!(s.fake.names("pods"), ["flowforge/build-42-a"]);
    let rows = s
        .store
        .query_audit(&AuditQuery {
            action: Some(AuditAction::OrphanCleanup),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].resource_name, "flowforge/orphan-a");
    assert_in_api_calls(&s.fake.requests());
}

#[tokio::test]
async fn with_a_leader_running_a_cancel_answers_with_the_soft_kill_taken() {
    let started = std::time::Instant::now();
    let fake = Fake::new(wiring::clock(started));
    let config = api_config();
    let running = wiring::start(&fake, config.clone(), false, wiring::clock(started)).await;
    fake.insert(wiring::running_job(
        "build-42",
        JOB_UID,
        wiring::t0(),
        json!({"flowforge.io/timeout-seconds": "3600", "flowforge.io/grace-period-seconds": "60"}),
    ));
    let id = JobId::parse("j-42").expect("id");
    let stored = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let Ok(Some(j)) = running.store.get_job(&id).await {
                break j;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the leader stores the Job");
    assert_eq!(stored.stage, Stage::Running);
    // This replica's API, over the leader's store and cluster.
    let api = ApiState::new(
        running.store.clone(),
        config.clone(),
        Actions::new(
            fake.client(),
            Scope::new(&config.kubernetes, &config.annotations.prefix),
            false,
            "jw-1",
        ),
        OrphanPass::from_config(fake.client(), &config, running.store.clone(), false),
        None,
        jobwarden::events::EventBus::new(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let serving = tokio::spawn(async move {
        let _ = axum::serve(listener, router(api)).await;
    });
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/jobs/j-42/cancel"))
        .send()
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    let view: Value = resp.json().await.expect("json");
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["stage"], "terminating", "{view}");
    assert_eq!(view["steps"][0]["step"], "soft_kill", "{view}");
    // The leader's soft kill: the deadline patch, well before the timeout.
    running
        .until(5, "the soft kill patch", |f| {
            f.get("jobs", "flowforge", "build-42")
                .is_some_and(|j| j["spec"]["activeDeadlineSeconds"] == 1)
        })
        .await;
    let rows = running.audit().await;
    let soft: Vec<_> = rows
        .iter()
        .filter(|r| r.action == AuditAction::SoftKill && r.details.is_some())
        .collect();
    assert!(
        soft.iter().any(|r| r.reason.starts_with("cancelled")),
        "{rows:#?}"
    );
    serving.abort();
    running.finish().await;
}
