//! The watch loop end to end against a small in-process fake API server (an axum Router used
//! as kube's `Client` service): it lists labelled Jobs and Pods, becomes ready, soft-kills the
//! Job past its deadline (PATCH + Event), and sends nothing for an unlabelled Job or one in a
//! protected namespace.

mod k8s_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobwarden::config::Config;
use jobwarden::kubernetes::actions::{API_CALLS, Actions, classify};
use jobwarden::kubernetes::controller;
use jobwarden::kubernetes::observe::Scope;
use jobwarden::kubernetes::reconcile::Reconciler;
use jobwarden::model::Timestamp;
use jobwarden::store::Store;
use k8s_support::*;
use serde_json::{Value, json};

#[derive(Default)]
struct Fake {
    jobs: Vec<Value>,
    pods: Vec<Value>,
    /// Every request that is not a list or watch: (method, path, body).
    writes: Vec<(String, String, Value)>,
    /// Every request's RBAC terms.
    calls: Vec<(String, String, String)>,
}

type Shared = Arc<Mutex<Fake>>;

fn has_label(item: &Value, selector: &str) -> bool {
    // Only the existence selector the controller uses (`job-id`).
    item["metadata"]["labels"].get(selector).is_some()
}

async fn handle(State(fake): State<Shared>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut f = fake.lock().expect("lock");
    if let Some(c) = classify(&method, &pq) {
        f.calls.push(c);
    }
    if method == "GET" && get("watch").is_some() {
        // An open watch that never reports anything (the list already said everything).
        drop(f);
        let stream = futures::stream::pending::<Result<Bytes, std::convert::Infallible>>();
        return (StatusCode::OK, Body::from_stream(stream)).into_response();
    }
    let selector = get("labelSelector").unwrap_or_default();
    let list = |kind: &str, items: &[Value]| {
        let items: Vec<Value> = items
            .iter()
            .filter(|i| has_label(i, &selector))
            .cloned()
            .collect();
        axum::Json(json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "100"}, "items": items}))
            .into_response()
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/apis/batch/v1/jobs") => list("JobList", &f.jobs),
        ("GET", "/api/v1/pods") => list("PodList", &f.pods),
        _ => {
            f.writes.push((method.clone(), path.clone(), body.clone()));
            let reply = if path.ends_with("/events") {
                body
            } else {
                job_json()
            };
            (StatusCode::OK, axum::Json(reply)).into_response()
        }
    }
}

#[tokio::test]
async fn the_loop_lists_becomes_ready_and_soft_kills_a_job_past_its_deadline() {
    let mut overdue = job_json(); // timeout 3600 s from 10:00:01
    overdue["metadata"]["annotations"] = json!({"flowforge.io/timeout-seconds": "60"});
    let mut unlabelled = job_json();
    unlabelled["metadata"]["name"] = "other".into();
    unlabelled["metadata"]["labels"] = json!({"app": "x"});
    let mut protected = job_json();
    protected["metadata"]["namespace"] = "kube-system".into();
    protected["metadata"]["name"] = "sys".into();
    let fake: Shared = Arc::new(Mutex::new(Fake {
        jobs: vec![overdue, unlabelled, protected],
        pods: vec![pod_json("build-42-a", "pod-a", "Running")],
        ..Fake::default()
    }));
    let router = axum::Router::new()
        .fallback(handle)
        .with_state(fake.clone());
    let client = kube::Client::new(router, "default");

    let config = Config::default();
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let store = Store::open("sqlite::memory:").await.expect("store");
    let reconciler = Reconciler::new(
        config,
        store,
        Actions::new(client.clone(), scope, false, "jw-0"),
    );
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    // This replica leads throughout (tests/k8s_leader.rs covers following).
    let (_leading, leading_rx) = tokio::sync::watch::channel(true);
    let now: Timestamp = "2026-11-28T10:30:00Z".parse().expect("ts");
    let task = tokio::spawn(controller::run(
        client,
        "job-id".into(),
        reconciler,
        ready.clone(),
        leading_rx,
        stop_rx,
        move || now,
    ));

    let writes = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let w = fake.lock().expect("lock").writes.clone();
            if w.len() >= 4 {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the overdue Job is soft-killed");
    assert!(ready.load(Ordering::Relaxed));
    // Give the loop a moment to send anything it should not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (all_writes, calls) = {
        let f = fake.lock().expect("lock");
        (f.writes.clone(), f.calls.clone())
    };
    let lines: Vec<String> = all_writes
        .iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert_eq!(
        lines,
        [
            "POST /apis/events.k8s.io/v1/namespaces/flowforge/events",
            "POST /apis/events.k8s.io/v1/namespaces/flowforge/events",
            "PATCH /apis/batch/v1/namespaces/flowforge/jobs/build-42",
            "POST /apis/events.k8s.io/v1/namespaces/flowforge/events",
        ],
        "pod grace too short, the overdue warning, then the soft kill; nothing for the unlabelled Job or the kube-system one"
    );
    assert_eq!(writes[0].2["reason"], "GracePeriodTooShort");
    assert_eq!(writes[1].2["reason"], "TimeoutWarning");
    assert_eq!(writes[2].2["spec"]["activeDeadlineSeconds"], 1);
    assert_eq!(writes[3].2["reason"], "TimeoutSoftKill");
    for (g, r, v) in &calls {
        assert!(
            API_CALLS
                .iter()
                .any(|c| c.group == g && c.resource == r && c.verb == v),
            "({g:?}, {r}, {v}) is not in API_CALLS"
        );
    }
    for needed in [
        ("batch", "jobs", "list"),
        ("batch", "jobs", "watch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
    ] {
        assert!(
            calls
                .iter()
                .any(|(g, r, v)| (g.as_str(), r.as_str(), v.as_str()) == needed),
            "the loop never made {needed:?}: {:?}",
            calls
        );
    }
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop stops on shutdown")
        .expect("task");
}
