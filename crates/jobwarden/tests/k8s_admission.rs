//! The admission webhook over HTTPS, as the API server calls it: real AdmissionReview v1
//! bodies (`request.uid`, `kind`, `object` as the API server sends it after defaulting,
//! `oldObject`, `dryRun`, `options`, `userInfo`), a real certificate made in the test (a CA and
//! a leaf for 127.0.0.1, by the openssl CLI) that the client verifies, and a real SQLite store
//! for the denial audit rows.
//!
//! - mutate: the exact JSON Patch, applied with json-patch (kube's own) to give a Job that
//!   parses as `batch/v1` and that the controller reads back with the same timeout and grace;
//!   what it must not change (a smaller `activeDeadlineSeconds`, the user's annotations and
//!   labels, a manifest-job Job, anything in a protected or unwatched namespace, anything
//!   validate must judge); CronJob templates;
//! - validate: denial messages naming the org, key, value and limit, one audit row per denial
//!   and none for a dry-run request or an admission; `warn` mode; the pipeline as the API
//!   server runs it (mutate, apply, validate);
//! - malformed bodies: 400 with a JSON error, the server keeps serving;
//! - TLS: the CA-verified handshake, a client trusting another CA refused, the certificate
//!   reloaded when its files change; an answer that does not wait for a locked store.

mod tls_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jobwarden::config::Config;
use jobwarden::kubernetes::admission::{self, Mode, Plan};
use jobwarden::kubernetes::manifest::{JobRequest, render_job, to_json_value};
use jobwarden::kubernetes::observe::{Scope, observe_job};
use jobwarden::metrics::{AdmissionWebhook, Metrics};
use jobwarden::model::{AuditAction, AuditEntry, JobId};
use jobwarden::policy::resolve;
use jobwarden::store::{AuditQuery, Store};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use serde_json::{Value, json};

const CONFIG: &str = r#"
[policy]
global_default = "2h"
grace_period = "5m"
hard_max = "24h"
[policy.organization_max]
acme = "4h"
[policy.job_type_overrides]
build = "1h"
[policy.job_type_grace]
build = "2m"
[retention]
successful = "1h"
failed = "24h"
terminated = "24h"
"#;

/// A webhook server on a free loopback port, with its store and metrics.
struct Server {
    base: String,
    client: reqwest::Client,
    store: Store,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Sender<bool>,
    running: Option<admission::Running>,
    pair: tls_support::Pair,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start(mode: Mode, extra: &str) -> Server {
        Server::start_with(mode, extra, false).await
    }

    async fn start_with(mode: Mode, extra: &str, dry_run: bool) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = tls_support::make(dir.path(), "jw", "DNS:localhost,IP:127.0.0.1");
        let text = format!(
            "{CONFIG}\n{extra}\n[admission]\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\nmode = \"{}\"\n",
            pair.cert.display().to_string(),
            pair.key.display().to_string(),
            mode.as_str()
        );
        let config = Config::parse(&text, "test.toml").expect("config");
        let store = Store::open(&format!("sqlite://{}", dir.path().join("jw.db").display()))
            .await
            .expect("store");
        let metrics = Arc::new(Metrics::default());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let plan = Plan {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert_file: pair.cert.clone(),
            key_file: pair.key.clone(),
            mode,
            reload_every: Duration::from_millis(100),
        };
        let running = admission::start(
            &plan,
            &config,
            store.clone(),
            metrics.clone(),
            dry_run,
            stop_rx,
        )
        .await
        .expect("the webhook starts");
        Server {
            base: format!("https://127.0.0.1:{}", running.addr.port()),
            client: tls_support::client(&pair.ca),
            store,
            metrics,
            stop,
            running: Some(running),
            pair,
            dir,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string().into_bytes()).await
    }

    async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the webhook answers over verified TLS");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("a JSON body");
        (status, body)
    }

    /// The mutating webhook's answer: the response and its decoded patch (empty: none).
    async fn mutate(&self, review: &Value) -> (Value, Vec<Value>) {
        let (status, body) = self.post("/admission/mutate", review).await;
        assert_eq!(status, 200, "{body}");
        let r = body["response"].clone();
        assert_eq!(
            r["uid"], review["request"]["uid"],
            "response.uid = request.uid"
        );
        assert_eq!(r["allowed"], true, "mutate never denies: {r}");
        let patch = match r["patch"].as_str() {
            None => {
                assert!(r.get("patchType").is_none(), "{r}");
                Vec::new()
            }
            Some(b64) => {
                assert_eq!(r["patchType"], "JSONPatch");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("base64");
                serde_json::from_slice(&bytes).expect("a JSON array of ops")
            }
        };
        (r, patch)
    }

    async fn validate(&self, review: &Value) -> Value {
        let (status, body) = self.post("/admission/validate", review).await;
        assert_eq!(status, 200, "{body}");
        let r = body["response"].clone();
        assert_eq!(r["uid"], review["request"]["uid"]);
        assert!(r.get("patch").is_none(), "validate never patches: {r}");
        r
    }

    async fn denials(&self) -> Vec<AuditEntry> {
        self.store
            .query_audit(&AuditQuery {
                action: Some(AuditAction::AdmissionDenied),
                ..AuditQuery::default()
            })
            .await
            .expect("audit query")
    }

    /// Waits (up to 5 s) for `n` denial rows; then checks no more come.
    async fn wait_denials(&self, n: usize) -> Vec<AuditEntry> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let rows = self.denials().await;
            if rows.len() >= n || Instant::now() > deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let rows = self.denials().await;
                assert_eq!(rows.len(), n, "{rows:#?}");
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(mut self) {
        let _ = self.stop.send(true);
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(10), r.join())
                .await
                .expect("the webhook stops");
        }
    }
}

/// A Job as the API server sends it to admission: defaulted, no uid yet.
fn job(ns: &str, name: &str, labels: Value, annotations: Value, spec: Value) -> Value {
    let mut metadata = json!({"name": name, "namespace": ns, "creationTimestamp": null});
    if !labels.is_null() {
        metadata["labels"] = labels;
    }
    if !annotations.is_null() {
        metadata["annotations"] = annotations;
    }
    let mut job = json!({
        "kind": "Job",
        "apiVersion": "batch/v1",
        "metadata": metadata,
        "spec": {
            "parallelism": 1,
            "completions": 1,
            "backoffLimit": 6,
            "completionMode": "NonIndexed",
            "suspend": false,
            "podReplacementPolicy": "TerminatingOrFailed",
            "template": {
                "metadata": {"creationTimestamp": null},
                "spec": {
                    "containers": [{
                        "name": "main", "image": "ghcr.io/flowforge/runner:1",
                        "command": ["make", "test"], "resources": {},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
                    }],
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "securityContext": {},
                    "schedulerName": "default-scheduler"
                }
            }
        },
        "status": {}
    });
    if let Value::Object(extra) = spec {
        for (k, v) in extra {
            job["spec"][k] = v;
        }
    }
    job
}

/// A CronJob whose jobTemplate is `template`'s metadata and spec.
fn cronjob(ns: &str, name: &str, template: &Value) -> Value {
    json!({
        "kind": "CronJob",
        "apiVersion": "batch/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": {
            "schedule": "0 3 * * *",
            "concurrencyPolicy": "Forbid",
            "suspend": false,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 1,
            "jobTemplate": {
                "metadata": template["metadata"].clone(),
                "spec": template["spec"].clone(),
            }
        },
        "status": {}
    })
}

/// The AdmissionReview of a CREATE of `object`.
fn review(uid: &str, object: &Value, dry_run: bool) -> Value {
    let kind = object["kind"].as_str().expect("kind");
    let resource = if kind == "CronJob" {
        "cronjobs"
    } else {
        "jobs"
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "batch", "version": "v1", "kind": kind},
            "resource": {"group": "batch", "version": "v1", "resource": resource},
            "requestKind": {"group": "batch", "version": "v1", "kind": kind},
            "requestResource": {"group": "batch", "version": "v1", "resource": resource},
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "alice@flowforge.io", "uid": "u-alice",
                         "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1",
                        "fieldManager": "kubectl-client-side-apply"}
        }
    })
}

/// `object` with `patch` applied as the API server applies it.
fn apply(object: &Value, patch: &[Value]) -> Value {
    let ops: json_patch::Patch =
        serde_json::from_value(Value::Array(patch.to_vec())).expect("an RFC 6902 patch");
    let mut out = object.clone();
    json_patch::patch(&mut out, &ops).expect("the patch applies");
    out
}

/// The job id the patch labels the Job with: a generated one, valid and unique-looking.
fn generated_id(patch: &[Value]) -> String {
    let id = patch
        .iter()
        .find(|op| op["path"] == "/metadata/labels")
        .and_then(|op| op["value"]["job-id"].as_str())
        .expect("a job-id label in the patch")
        .to_owned();
    let parsed = JobId::parse(&id).expect("a valid label value");
    assert!(parsed.is_generated(), "a fresh lowercase ULID: {id}");
    id
}

fn ann(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect(),
    )
}

/// The Job as the controller would read it once created: same timeout and grace as admission
/// recorded.
fn controller_view(config: &Config, patched: &Value) -> (u64, u64) {
    let mut job: Job = serde_json::from_value(patched.clone()).expect("a batch/v1 Job");
    job.metadata.uid = Some("3f2c8a5e-0b7d-4c1e-9a6f-2d8e4b7c1a90".into());
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let o = observe_job(&job, &[], &scope).expect("the controller takes it as its own");
    let r = resolve(&o.settings, &config.policy);
    (r.timeout.as_secs(), r.grace.as_secs())
}

fn test_config() -> Config {
    Config::parse(CONFIG, "test.toml").expect("config")
}

#[tokio::test]
async fn mutate_gives_an_unlabelled_job_its_policy_and_the_controller_reads_it_back() {
    let s = Server::start(Mode::Enforce, "").await;
    let object = job(
        "flowforge",
        "build-7",
        Value::Null,
        ann(&[
            ("flowforge.io/organization-id", "acme"),
            ("flowforge.io/job-type", "build"),
        ]),
        json!({}),
    );
    let (_, patch) = s.mutate(&review("a1", &object, false)).await;
    let id = generated_id(&patch);
    assert_eq!(
        Value::Array(patch.clone()),
        json!([
            {"op": "add", "path": "/metadata/labels", "value": {"job-id": id}},
            {"op": "add", "path": "/metadata/annotations/flowforge.io~1grace-period-seconds", "value": "120"},
            {"op": "add", "path": "/metadata/annotations/flowforge.io~1grace-source", "value": "job_type"},
            {"op": "add", "path": "/metadata/annotations/flowforge.io~1timeout-seconds", "value": "3600"},
            {"op": "add", "path": "/metadata/annotations/flowforge.io~1timeout-source", "value": "job_type"},
            {"op": "add", "path": "/spec/template/metadata/labels", "value": {"job-id": id}},
            // timeout 1h + 2 × grace 2m: the backstop at the force delete.
            {"op": "add", "path": "/spec/activeDeadlineSeconds", "value": 3840},
            // the longest retention (24h) + 1h, as `manifest job`.
            {"op": "add", "path": "/spec/ttlSecondsAfterFinished", "value": 90000}
        ])
    );
    let patched = apply(&object, &patch);
    let typed: Job = serde_json::from_value(patched.clone()).expect("a valid batch/v1 Job");
    assert_eq!(
        serde_json::to_value(&typed).expect("json")["spec"]["template"]["metadata"]["labels"]["job-id"],
        json!(id)
    );
    // The ladder acts at the effective timeout (1h), not at the backstop.
    assert_eq!(controller_view(&test_config(), &patched), (3600, 120));
    // Nothing else moved: the patched Job minus what the patch added is the original.
    let mut back = patched.clone();
    back["metadata"]
        .as_object_mut()
        .expect("meta")
        .remove("labels");
    for k in [
        "flowforge.io/grace-period-seconds",
        "flowforge.io/grace-source",
        "flowforge.io/timeout-seconds",
        "flowforge.io/timeout-source",
    ] {
        back["metadata"]["annotations"]
            .as_object_mut()
            .expect("annotations")
            .remove(k);
    }
    let spec = back["spec"].as_object_mut().expect("spec");
    spec.remove("activeDeadlineSeconds");
    spec.remove("ttlSecondsAfterFinished");
    back["spec"]["template"]["metadata"]
        .as_object_mut()
        .expect("template metadata")
        .remove("labels");
    assert_eq!(back, object);

    // The mutated Job passes validation: nothing to deny, nothing to warn about.
    let r = s.validate(&review("a2", &patched, false)).await;
    assert_eq!(r, json!({"uid": "a2", "allowed": true}));
    // Two Jobs get two ids.
    let (_, again) = s.mutate(&review("a3", &object, false)).await;
    assert_ne!(generated_id(&again), id);
    assert_eq!(
        s.metrics
            .admission_requests(AdmissionWebhook::Mutate, "patched"),
        2
    );
    assert_eq!(
        s.metrics
            .admission_requests(AdmissionWebhook::Validate, "allowed"),
        1
    );
    assert!(
        s.denials().await.is_empty(),
        "an admission writes no audit row"
    );
    s.finish().await;
}

#[tokio::test]
async fn mutate_never_raises_a_deadline_nor_rewrites_what_the_user_set() {
    let s = Server::start(Mode::Enforce, "").await;
    // Label, timeout, grace, a smaller deadline and a TTL of the user's own.
    let object = job(
        "flowforge",
        "build-8",
        json!({"job-id": "Build_8", "team": "infra"}),
        ann(&[
            ("flowforge.io/organization-id", "acme"),
            ("flowforge.io/timeout-seconds", "30m"),
            ("flowforge.io/grace-period-seconds", "1m"),
        ]),
        json!({"activeDeadlineSeconds": 600, "ttlSecondsAfterFinished": 100}),
    );
    let (_, patch) = s.mutate(&review("b1", &object, false)).await;
    // The deadline (600 s) is the smaller request: it is the effective timeout.
    assert_eq!(
        Value::Array(patch.clone()),
        json!([
            {"op": "add", "path": "/metadata/annotations/flowforge.io~1grace-source", "value": "job"},
            {"op": "add", "path": "/metadata/annotations/flowforge.io~1timeout-source", "value": "job"},
            {"op": "add", "path": "/spec/template/metadata/labels", "value": {"job-id": "Build_8"}}
        ])
    );
    let patched = apply(&object, &patch);
    assert_eq!(
        patched["spec"]["activeDeadlineSeconds"], 600,
        "never raised"
    );
    assert_eq!(patched["spec"]["ttlSecondsAfterFinished"], 100);
    assert_eq!(patched["metadata"]["labels"], object["metadata"]["labels"]);
    assert_eq!(
        patched["metadata"]["annotations"]["flowforge.io/timeout-seconds"], "30m",
        "the user's own value, in the user's own form"
    );
    assert_eq!(controller_view(&test_config(), &patched), (600, 60));

    // A deadline larger than timeout + 2 × grace is lowered to it, and only that.
    let object = job(
        "flowforge",
        "build-9",
        json!({"job-id": "j-9"}),
        ann(&[
            ("flowforge.io/timeout-seconds", "30m"),
            ("flowforge.io/grace-period-seconds", "1m"),
            ("flowforge.io/timeout-source", "job"),
            ("flowforge.io/grace-source", "job"),
        ]),
        json!({"activeDeadlineSeconds": 7000, "ttlSecondsAfterFinished": 0}),
    );
    let (_, patch) = s.mutate(&review("b2", &object, false)).await;
    assert_eq!(
        Value::Array(patch),
        json!([
            {"op": "add", "path": "/spec/template/metadata/labels", "value": {"job-id": "j-9"}},
            {"op": "replace", "path": "/spec/activeDeadlineSeconds", "value": 1920}
        ])
    );
    s.finish().await;
}

#[tokio::test]
async fn a_job_made_by_manifest_job_is_admitted_unchanged_with_the_same_annotations() {
    let s = Server::start(Mode::Enforce, "").await;
    let config = test_config();
    let rendered = render_job(
        &JobRequest {
            job_id: JobId::parse("j-42").expect("id"),
            timeout: Some(Duration::from_secs(10 * 3600)),
            grace: None,
            ttl: None,
            org: Some("acme".into()),
            job_type: Some("build".into()),
            name: None,
            namespace: Some("flowforge".into()),
            image: "ghcr.io/flowforge/runner:1".into(),
            command: vec!["make".into()],
            heartbeat: None,
        },
        &config,
    )
    .expect("renders");
    let object = to_json_value(&rendered.job).expect("json");
    let (r, patch) = s.mutate(&review("c1", &object, false)).await;
    assert!(patch.is_empty(), "{r}");
    let r = s.validate(&review("c2", &object, false)).await;
    assert_eq!(r, json!({"uid": "c2", "allowed": true}));

    // An unlabelled Job with the same request, mutated, carries the same annotations.
    let bare = job(
        "flowforge",
        "build-10",
        Value::Null,
        ann(&[
            ("flowforge.io/organization-id", "acme"),
            ("flowforge.io/job-type", "build"),
            ("flowforge.io/timeout-seconds", "4h"),
        ]),
        json!({}),
    );
    let (_, patch) = s.mutate(&review("c3", &bare, false)).await;
    let patched = apply(&bare, &patch);
    let keys = |v: &Value| -> Vec<String> {
        v["metadata"]["annotations"]
            .as_object()
            .expect("annotations")
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(keys(&patched), keys(&object));
    for k in [
        "flowforge.io/grace-period-seconds",
        "flowforge.io/grace-source",
    ] {
        assert_eq!(
            patched["metadata"]["annotations"][k],
            object["metadata"]["annotations"][k]
        );
    }
    s.finish().await;
}

#[tokio::test]
async fn enforce_denies_a_request_over_a_maximum_naming_org_key_value_and_limit() {
    let s = Server::start(Mode::Enforce, "").await;
    let over = job(
        "flowforge",
        "build-11",
        json!({"job-id": "j-11"}),
        ann(&[
            ("flowforge.io/organization-id", "acme"),
            ("flowforge.io/timeout-seconds", "10h"),
        ]),
        json!({}),
    );
    // As the API server runs it: mutate first. The request validate judges is left alone.
    let (_, patch) = s.mutate(&review("d1", &over, false)).await;
    assert_eq!(
        Value::Array(patch.clone()),
        json!([
            {"op": "add", "path": "/metadata/annotations/flowforge.io~1grace-period-seconds", "value": "300"},
            {"op": "add", "path": "/metadata/annotations/flowforge.io~1grace-source", "value": "global"},
            {"op": "add", "path": "/metadata/annotations/flowforge.io~1timeout-source", "value": "organization_max"},
            {"op": "add", "path": "/spec/template/metadata/labels", "value": {"job-id": "j-11"}},
            {"op": "add", "path": "/spec/ttlSecondsAfterFinished", "value": 90000}
        ]),
        "neither the timeout annotation nor activeDeadlineSeconds"
    );
    let mutated = apply(&over, &patch);
    let r = s.validate(&review("d2", &mutated, false)).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 403);
    assert_eq!(
        r["status"]["message"],
        "jobwarden: Job flowforge/build-11 (organisation acme): flowforge.io/timeout-seconds=\"10h\" (10h) exceeds organisation acme's maximum timeout of 4h (policy.organization_max.acme)"
    );
    let rows = s.wait_denials(1).await;
    let row = &rows[0];
    assert_eq!(row.initiated_by, "admission");
    assert_eq!(row.job_id, "j-11");
    assert_eq!(row.resource_type, "job");
    assert_eq!(row.resource_name, "flowforge/build-11");
    assert_eq!(
        row.reason,
        r["status"]["message"].as_str().expect("message")
    );
    assert!(!row.dry_run);
    let details = row.details.clone().expect("details");
    assert_eq!(details["uid"], "d2");
    assert_eq!(details["user"], "alice@flowforge.io");
    assert_eq!(details["violations"][0]["limit_seconds"], 4 * 3600);

    // activeDeadlineSeconds is a request too; over hard_max without an organisation.
    let deadline = job(
        "flowforge",
        "build-12",
        json!({"job-id": "j-12"}),
        Value::Null,
        json!({"activeDeadlineSeconds": 100_000}),
    );
    let (_, patch) = s.mutate(&review("d3", &deadline, false)).await;
    assert!(
        !patch
            .iter()
            .any(|op| op["path"] == "/spec/activeDeadlineSeconds"
                || op["path"] == "/metadata/annotations/flowforge.io~1timeout-seconds"),
        "{patch:?}"
    );
    let r = s
        .validate(&review("d4", &apply(&deadline, &patch), false))
        .await;
    assert_eq!(
        r["status"]["message"],
        "jobwarden: Job flowforge/build-12 (no organisation): spec.activeDeadlineSeconds=\"100000\" (1d3h46m40s) exceeds the platform's maximum timeout of 1d (policy.hard_max)"
    );
    // Malformed settings are denied too, each named.
    let malformed = job(
        "flowforge",
        "build-13",
        json!({"job-id": "j-13"}),
        ann(&[
            ("flowforge.io/organization-id", "acme"),
            ("flowforge.io/grace-period-seconds", "-5"),
            ("flowforge.io/job-type", "../x"),
        ]),
        json!({}),
    );
    let r = s.validate(&review("d5", &malformed, false)).await;
    let message = r["status"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("jobwarden: Job flowforge/build-13 (organisation acme): flowforge.io/grace-period-seconds=\"-5\" is malformed: ")
            && message.contains("; flowforge.io/job-type=\"../x\" is malformed: invalid job type"),
        "{message}"
    );
    assert!(
        !message.contains("using"),
        "no fallback when denied: {message}"
    );
    s.wait_denials(3).await;

    // A dry-run request is answered the same, and writes nothing.
    let r = s.validate(&review("d6", &mutated, true)).await;
    assert_eq!(r["allowed"], false);
    s.wait_denials(3).await;
    assert_eq!(
        s.metrics
            .admission_requests(AdmissionWebhook::Validate, "denied"),
        4
    );
    s.finish().await;
}

#[tokio::test]
async fn warn_admits_with_one_warning_per_problem_and_writes_nothing() {
    let s = Server::start(Mode::Warn, "").await;
    let object = job(
        "flowforge",
        "build-14",
        json!({"job-id": "j-14"}),
        ann(&[
            ("flowforge.io/organization-id", "acme"),
            ("flowforge.io/timeout-seconds", "10h"),
            ("flowforge.io/ttl-seconds-after-finished", "1.5h"),
        ]),
        json!({}),
    );
    let (_, patch) = s.mutate(&review("e1", &object, false)).await;
    let mutated = apply(&object, &patch);
    assert_eq!(
        mutated["metadata"]["annotations"]["flowforge.io/timeout-seconds"], "10h",
        "warn changes nothing enforce would have denied"
    );
    assert!(mutated["spec"].get("activeDeadlineSeconds").is_none());
    let r = s.validate(&review("e2", &mutated, false)).await;
    assert_eq!(r["allowed"], true);
    let warnings: Vec<&str> = r["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().expect("text"))
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("Job flowforge/build-14 (organisation acme): flowforge.io/ttl-seconds-after-finished=\"1.5h\" is malformed: ")
            && warnings[0].ends_with("; jobwarden uses the retention for the job's outcome"),
        "{}",
        warnings[0]
    );
    assert_eq!(
        warnings[1],
        "Job flowforge/build-14 (organisation acme): flowforge.io/timeout-seconds=\"10h\" (10h) exceeds organisation acme's maximum timeout of 4h (policy.organization_max.acme); jobwarden ends it after 4h"
    );
    for w in &warnings {
        assert!(!w.contains('\n') && w.len() < 256, "{w}");
    }
    // The controller still caps it.
    assert_eq!(controller_view(&test_config(), &mutated).0, 4 * 3600);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.denials().await.is_empty());
    assert_eq!(
        s.metrics
            .admission_requests(AdmissionWebhook::Validate, "warned"),
        1
    );
    s.finish().await;
}

#[tokio::test]
async fn cronjob_templates_get_the_policy_but_no_shared_job_id() {
    let s = Server::start(Mode::Enforce, "").await;
    // A jobTemplate without metadata: the global policy.
    let template = job("flowforge", "unused", Value::Null, Value::Null, json!({}));
    let mut object = cronjob("flowforge", "nightly", &template);
    object["spec"]["jobTemplate"]
        .as_object_mut()
        .expect("jobTemplate")
        .remove("metadata");
    let (_, patch) = s.mutate(&review("f1", &object, false)).await;
    assert_eq!(
        Value::Array(patch.clone()),
        json!([
            {"op": "add", "path": "/spec/jobTemplate/metadata", "value": {}},
            {"op": "add", "path": "/spec/jobTemplate/metadata/annotations", "value": {
                "flowforge.io/grace-period-seconds": "300",
                "flowforge.io/grace-source": "global",
                "flowforge.io/timeout-seconds": "7200",
                "flowforge.io/timeout-source": "global"
            }},
            {"op": "add", "path": "/spec/jobTemplate/spec/activeDeadlineSeconds", "value": 7800},
            {"op": "add", "path": "/spec/jobTemplate/spec/ttlSecondsAfterFinished", "value": 90000}
        ])
    );
    let patched = apply(&object, &patch);
    let _: CronJob = serde_json::from_value(patched.clone()).expect("a valid batch/v1 CronJob");
    assert!(
        patched["spec"]["jobTemplate"]["metadata"]
            .get("labels")
            .is_none()
            && patched["spec"]["jobTemplate"]["spec"]["template"]["metadata"]
                .get("labels")
                .is_none(),
        "each Job of the CronJob gets its own id when it is created"
    );
    // A Job the CronJob creates from it passes through mutate: its own id, and nothing of
    // the policy changes (the template carried it).
    let mut created = job(
        "flowforge",
        "nightly-29000000",
        Value::Null,
        Value::Null,
        json!({}),
    );
    created["metadata"]["annotations"] =
        patched["spec"]["jobTemplate"]["metadata"]["annotations"].clone();
    created["spec"] = patched["spec"]["jobTemplate"]["spec"].clone();
    let (_, patch) = s.mutate(&review("f1b", &created, false)).await;
    let id = generated_id(&patch);
    assert_eq!(
        Value::Array(patch),
        json!([
            {"op": "add", "path": "/metadata/labels", "value": {"job-id": id}},
            {"op": "add", "path": "/spec/template/metadata/labels", "value": {"job-id": id}}
        ])
    );

    // A jobTemplate with its own type: its type's policy.
    let typed_template = cronjob(
        "flowforge",
        "hourly",
        &job(
            "flowforge",
            "unused",
            Value::Null,
            ann(&[("flowforge.io/job-type", "build")]),
            json!({}),
        ),
    );
    let (_, patch) = s.mutate(&review("f1c", &typed_template, false)).await;
    assert_eq!(
        Value::Array(patch),
        json!([
            {"op": "add", "path": "/spec/jobTemplate/metadata/annotations/flowforge.io~1grace-period-seconds", "value": "120"},
            {"op": "add", "path": "/spec/jobTemplate/metadata/annotations/flowforge.io~1grace-source", "value": "job_type"},
            {"op": "add", "path": "/spec/jobTemplate/metadata/annotations/flowforge.io~1timeout-seconds", "value": "3600"},
            {"op": "add", "path": "/spec/jobTemplate/metadata/annotations/flowforge.io~1timeout-source", "value": "job_type"},
            {"op": "add", "path": "/spec/jobTemplate/spec/activeDeadlineSeconds", "value": 3840},
            {"op": "add", "path": "/spec/jobTemplate/spec/ttlSecondsAfterFinished", "value": 90000}
        ])
    );

    // Over the maximum: denied, naming the template's key.
    let mut over = cronjob(
        "flowforge",
        "weekly",
        &job(
            "flowforge",
            "unused",
            Value::Null,
            ann(&[("flowforge.io/organization-id", "acme")]),
            json!({"activeDeadlineSeconds": 20_000}),
        ),
    );
    let r = s.validate(&review("f2", &over, false)).await;
    assert_eq!(
        r["status"]["message"],
        "jobwarden: CronJob flowforge/weekly (organisation acme): spec.jobTemplate.spec.activeDeadlineSeconds=\"20000\" (5h33m20s) exceeds organisation acme's maximum timeout of 4h (policy.organization_max.acme)"
    );
    let rows = s.wait_denials(1).await;
    assert_eq!(
        (rows[0].resource_type.as_str(), rows[0].job_id.as_str()),
        ("cronjob", "")
    );
    // A job-id label on the template would be shared by every Job: a warning.
    over["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] = json!(600);
    over["spec"]["jobTemplate"]["metadata"]["labels"] = json!({"job-id": "nightly"});
    let r = s.validate(&review("f3", &over, false)).await;
    assert_eq!(r["allowed"], true);
    assert!(
        r["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("every Job it creates would share one job id")),
        "{r}"
    );
    s.finish().await;
}

#[tokio::test]
async fn protected_and_unwatched_namespaces_and_other_requests_are_never_touched() {
    let s = Server::start(
        Mode::Enforce,
        "[kubernetes]\nnamespaces = [\"flowforge\", \"batch\"]\n",
    )
    .await;
    let judged = |ns: &str| {
        job(
            ns,
            "sys-1",
            Value::Null,
            ann(&[
                ("flowforge.io/organization-id", "acme"),
                ("flowforge.io/timeout-seconds", "forever"),
            ]),
            json!({"activeDeadlineSeconds": 10_000_000}),
        )
    };
    for ns in ["kube-system", "kube-node-lease", "elsewhere"] {
        let object = judged(ns);
        let (r, patch) = s.mutate(&review("g1", &object, false)).await;
        assert!(patch.is_empty(), "{ns}: {r}");
        assert_eq!(r, json!({"uid": "g1", "allowed": true}), "{ns}");
        let r = s.validate(&review("g2", &object, false)).await;
        assert_eq!(r, json!({"uid": "g2", "allowed": true}), "{ns}");
    }
    // The namespace comes from the request when the object leaves it out.
    let mut object = judged("kube-system");
    object["metadata"]
        .as_object_mut()
        .expect("meta")
        .remove("namespace");
    let (_, patch) = s.mutate(&review("g3", &object, false)).await;
    assert!(patch.is_empty());
    let mut rv = review("g4", &object, false);
    rv["request"]["namespace"] = json!("flowforge");
    assert_eq!(
        s.validate(&rv).await["allowed"],
        false,
        "in scope by request.namespace"
    );
    s.wait_denials(1).await;

    // Not a CREATE of a batch/v1 Job or CronJob: admitted as it is.
    let object = judged("flowforge");
    for (uid, edit) in [
        (
            "g5",
            json!({"operation": "UPDATE", "oldObject": object.clone()}),
        ),
        (
            "g6",
            json!({"operation": "DELETE", "object": null, "oldObject": object.clone()}),
        ),
        (
            "g7",
            json!({"kind": {"group": "", "version": "v1", "kind": "Pod"}}),
        ),
        (
            "g8",
            json!({"kind": {"group": "batch", "version": "v1beta1", "kind": "CronJob"}}),
        ),
    ] {
        let mut rv = review(uid, &object, false);
        for (k, v) in edit.as_object().expect("edit") {
            rv["request"][k] = v.clone();
        }
        let (r, patch) = s.mutate(&rv).await;
        assert!(patch.is_empty(), "{uid}: {r}");
        assert_eq!(
            s.validate(&rv).await,
            json!({"uid": uid, "allowed": true}),
            "{uid}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.denials().await.len(), 1);
    s.finish().await;
}

#[tokio::test]
async fn malformed_bodies_get_a_clear_400_and_the_server_keeps_serving() {
    let s = Server::start(Mode::Enforce, "").await;
    let good = review(
        "h0",
        &job("flowforge", "b", Value::Null, Value::Null, json!({})),
        false,
    );
    let mut no_object = good.clone();
    no_object["request"]["object"] = Value::Null;
    let mut labels_list = good.clone();
    labels_list["request"]["object"]["metadata"]["labels"] = json!(["job-id"]);
    let mut scalar = good.clone();
    scalar["request"]["object"] = json!("a Job");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"{\"apiVersion\": ".to_vec(), "not an AdmissionReview"),
        ("empty", Vec::new(), "not an AdmissionReview"),
        (
            "v1beta1",
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec(),
            "admission.k8s.io/v1beta1",
        ),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "no request",
        ),
        (
            "no uid",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}"#.to_vec(),
            "request.uid",
        ),
        (
            "dryRun not a bool",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","dryRun":"yes"}}"#.to_vec(),
            "request.dryRun",
        ),
        ("no object", no_object.to_string().into_bytes(), "request.object is missing"),
        ("labels a list", labels_list.to_string().into_bytes(), "metadata.labels"),
        ("object a string", scalar.to_string().into_bytes(), "request.object"),
    ];
    for path in ["/admission/mutate", "/admission/validate"] {
        for (what, body, want) in &cases {
            let (status, v) = s.post_raw(path, body.clone()).await;
            assert_eq!(status, 400, "{path} {what}: {v}");
            let e = v["error"].as_str().unwrap_or_default();
            assert!(e.contains(want), "{path} {what}: {e}");
        }
    }
    let resp = s
        .client
        .get(format!("{}/admission/mutate", s.base))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 405);
    // Still serving.
    let (_, patch) = s.mutate(&good).await;
    assert!(!patch.is_empty());
    assert_eq!(
        s.metrics
            .admission_requests(AdmissionWebhook::Mutate, "bad_request"),
        cases.len() as u64
    );
    s.finish().await;
}

/// The leaf certificate a TLS client is shown, trusting only `ca`; `Err` if it refuses it.
async fn served_leaf(addr: &str, ca: &Path) -> Result<Vec<u8>, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA cert")).expect("a CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    Ok(conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a leaf")
        .to_vec())
}

#[tokio::test]
async fn tls_is_verified_against_the_ca_and_a_renewed_certificate_is_served() {
    let s = Server::start(Mode::Enforce, "").await;
    let addr = s.base.trim_start_matches("https://").to_owned();
    let leaf = served_leaf(&addr, &s.pair.ca).await.expect("trusted");
    let pem = std::fs::read(&s.pair.cert).expect("cert");
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let first = tokio_rustls::rustls::pki_types::CertificateDer::from_pem_slice(&pem)
        .expect("PEM")
        .to_vec();
    assert_eq!(leaf, first);

    // Another CA's client refuses it; reqwest too (no accept-any anywhere).
    let other = tls_support::make(s.dir.path(), "other", "DNS:localhost,IP:127.0.0.1");
    let refused = served_leaf(&addr, &other.ca).await.expect_err("untrusted");
    assert!(
        refused.contains("UnknownIssuer") || refused.contains("certificate"),
        "{refused}"
    );
    let err = tls_support::client(&other.ca)
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .expect_err("reqwest refuses it too");
    assert!(err.is_connect(), "{err:?}");

    // A half-written renewal (a certificate without its key) is not served.
    std::fs::copy(&other.cert, &s.pair.cert).expect("copy cert");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        served_leaf(&addr, &s.pair.ca)
            .await
            .expect("the old one still"),
        first
    );
    // Renewed: the other CA's pair, written over the files.
    std::fs::copy(&other.key, &s.pair.key).expect("copy key");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(leaf) = served_leaf(&addr, &other.ca).await {
            let pem = std::fs::read(&other.cert).expect("cert");
            let renewed = tokio_rustls::rustls::pki_types::CertificateDer::from_pem_slice(&pem)
                .expect("PEM")
                .to_vec();
            assert_eq!(leaf, renewed);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served_leaf(&addr, &s.pair.ca).await.is_err(),
        "the old CA no longer fits"
    );
    s.finish().await;
}

#[tokio::test]
async fn a_denial_is_answered_at_once_while_the_store_is_locked() {
    let s = Server::start(Mode::Enforce, "").await;
    // Another connection holds SQLite's write lock: the audit insert waits for it.
    use sqlx::Connection as _;
    let mut lock = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        s.dir.path().join("jw.db").display()
    ))
    .await
    .expect("connect");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .expect("lock");
    let over = job(
        "flowforge",
        "build-15",
        json!({"job-id": "j-15"}),
        ann(&[
            ("flowforge.io/organization-id", "acme"),
            ("flowforge.io/timeout-seconds", "5h"),
        ]),
        json!({}),
    );
    for i in 0..3 {
        let started = Instant::now();
        let r = s.validate(&review(&format!("i{i}"), &over, false)).await;
        let took = started.elapsed();
        assert_eq!(r["allowed"], false);
        assert!(
            took < Duration::from_millis(1000),
            "answered after {took:?} (the webhook's timeoutSeconds is 2)"
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("COMMIT")
        .execute(&mut lock)
        .await
        .expect("unlock");
    drop(lock);
    // Written once the store answers: one row per denial.
    s.wait_denials(3).await;
    s.finish().await;
}

#[tokio::test]
async fn a_dry_run_jobwarden_admits_everything_unchanged_and_audits_would_be_denials() {
    let s = Server::start_with(Mode::Enforce, "", true).await;
    let over = job(
        "flowforge",
        "build-16",
        Value::Null,
        ann(&[
            ("flowforge.io/organization-id", "acme"),
            ("flowforge.io/timeout-seconds", "5h"),
        ]),
        json!({}),
    );
    let (r, patch) = s.mutate(&review("k1", &over, false)).await;
    assert!(patch.is_empty(), "{r}");
    let r = s.validate(&review("k2", &over, false)).await;
    assert_eq!(r, json!({"uid": "k2", "allowed": true}));
    let rows = s.wait_denials(1).await;
    assert!(rows[0].dry_run);
    assert!(
        rows[0]
            .reason
            .contains("exceeds organisation acme's maximum")
    );
    s.finish().await;
}

fn jobwarden(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobwarden"))
        .args(args)
        .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
        .env("HOME", dir)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("JOBWARDEN_CONFIG")
        .output()
        .expect("run jobwarden");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `config check` and `run --runtime kubernetes` refuse the same `[admission]` sections with
/// the same message (file and key), before touching the cluster.
#[test]
fn config_check_and_run_refuse_a_bad_admission_section_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = tls_support::make(dir.path(), "good", "DNS:localhost");
    let other = tls_support::make(dir.path(), "other", "DNS:localhost");
    let s = |p: &Path| p.display().to_string();
    let section = |listen: &str, cert: &str, key: &str| {
        format!(
            "[admission]\nmode = \"enforce\"\nlisten = {listen:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n"
        )
    };
    let missing = s(&dir.path().join("missing.crt"));
    let cases = [
        (
            "[admission]\nmode = \"warn\"\n".to_owned(),
            "admission.cert_file: required with mode = \"warn\"",
        ),
        (
            section("127.0.0.1:8443", &missing, &s(&good.key)),
            "admission.cert_file: ",
        ),
        (
            section("127.0.0.1:8443", &missing, &s(&good.key)),
            "missing.crt: cannot read",
        ),
        (
            section("127.0.0.1:8443", &s(&good.key), &s(&good.key)),
            "no PEM certificate",
        ),
        (
            section("127.0.0.1:8443", &s(&good.cert), &s(&other.key)),
            "admission.key_file: ",
        ),
        (
            section("127.0.0.1:8443", &s(&good.cert), &s(&other.key)),
            "the key is another certificate's",
        ),
        (
            section("127.0.0.1:7800", &s(&good.cert), &s(&good.key)),
            "admission.listen: 127.0.0.1:7800 takes the port of the API",
        ),
        (
            section("localhost:8443", &s(&good.cert), &s(&good.key)),
            "admission.listen:",
        ),
    ];
    let file = dir.path().join("jw.toml");
    let path = s(&file);
    for (text, want) in cases {
        std::fs::write(&file, &text).expect("write");
        let (code, _, check) = jobwarden(&["config", "check", &path], dir.path());
        assert_eq!(code, 2, "config check accepted {text:?}: {check}");
        assert!(
            check.contains(&path) && check.contains(want),
            "{want}: {check}"
        );
        let (code, _, run) = jobwarden(
            &[
                "run",
                "--runtime",
                "kubernetes",
                "--config",
                &path,
                "--data-dir",
                &s(&dir.path().join("data")),
            ],
            dir.path(),
        );
        assert_eq!(code, 2, "run accepted {text:?}: {run}");
        assert_eq!(check, run, "one message for both");
    }
    std::fs::write(
        &file,
        section("127.0.0.1:8443", &s(&good.cert), &s(&good.key)),
    )
    .expect("write");
    let (code, out, err) = jobwarden(&["config", "check", &path], dir.path());
    assert_eq!((code, out.trim()), (0, "ok"), "{err}");
}

/// `run --runtime kubernetes` with `[admission] mode = "enforce"` serves the webhook next to the
/// API from its start (the webhook needs neither the cluster nor the store to answer: here the
/// API server it was given answers nothing), counts it in the API's `/metrics`, writes the
/// denial's audit row to its store, and stops on SIGTERM.
#[tokio::test]
async fn run_serves_the_webhook_next_to_the_api_and_counts_it_in_metrics() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = tls_support::make(dir.path(), "jw", "DNS:localhost,IP:127.0.0.1");
    // An API server that is not there: the controller retries, the webhook serves regardless.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
            pair.ca.display()
        ),
    )
    .expect("kubeconfig");
    let config = dir.path().join("jw.toml");
    std::fs::write(
        &config,
        format!(
            "{CONFIG}\n[admission]\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\nmode = \"enforce\"\n",
            pair.cert.display().to_string(),
            pair.key.display().to_string()
        ),
    )
    .expect("config");
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let data = dir.path().join("data");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jobwarden"))
        .args(["run", "--runtime", "kubernetes", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{api_port}")])
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", dir.path())
        .env("JOBWARDEN_LOG", "warn")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("JOBWARDEN_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn jobwarden");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let webhook = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("jobwarden did not say where the webhook listens")
            });
        if let Some(rest) = line.split("admission webhook (enforce) on ").nth(1) {
            break rest.split_whitespace().next().expect("address").to_owned();
        }
    };
    let client = tls_support::client(&pair.ca);
    let over = job(
        "flowforge",
        "build-17",
        json!({"job-id": "j-17"}),
        ann(&[
            ("flowforge.io/organization-id", "acme"),
            ("flowforge.io/timeout-seconds", "5h"),
        ]),
        json!({}),
    );
    let body: Value = client
        .post(format!("{webhook}/admission/validate"))
        .json(&review("l1", &over, false))
        .send()
        .await
        .expect("the webhook answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(body["response"]["allowed"], false, "{body}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{api_port}/metrics"))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(
            "jobwarden_admission_requests_total{webhook=\"validate\",result=\"denied\"} 1"
        ),
        "{metrics}"
    );
    // The denial's row is in the store `run` opened.
    let store = Store::open(&format!("sqlite://{}", data.join("jobwarden.db").display()))
        .await
        .expect("store");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = store
            .query_audit(&AuditQuery {
                action: Some(AuditAction::AdmissionDenied),
                ..AuditQuery::default()
            })
            .await
            .expect("query");
        if rows.len() == 1 {
            assert_eq!(rows[0].job_id, "j-17");
            break;
        }
        assert!(Instant::now() < deadline, "no denial row: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = i32::try_from(child.id()).expect("pid");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).expect("pid"),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("jobwarden did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
