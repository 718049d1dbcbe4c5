//! Test support for the Kubernetes tests: real-shaped Job and Pod JSON, and a scripted API
//! server in the ApiServerVerifier style (kube-rs/controller-rs `src/fixtures.rs`): kube's
//! `Client` talks to a `tower_test` mock; each request is recorded (method, path+query, JSON
//! body) and answered with the next scripted response.

#![allow(dead_code)]

use std::collections::BTreeMap;

use axum::http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

pub mod fake;
pub mod wiring;

/// One request as the API server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub method: String,
    /// Path and raw query, as sent.
    pub path: String,
    /// The query, decoded (kube-rs leaves an empty `?` or a leading `&`; the server ignores both).
    pub query: BTreeMap<String, String>,
    pub body: Value,
}

impl Seen {
    /// `METHOD path` and the decoded query parameters sorted by name, `?k=v&k=v`.
    pub fn line(&self) -> String {
        let path = self.path.split('?').next().unwrap_or_default();
        if self.query.is_empty() {
            format!("{} {path}", self.method)
        } else {
            let q: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{} {path}?{}", self.method, q.join("&"))
        }
    }
}

/// A client whose API server answers `responses` in order (a 500 Status once they run out)
/// and records what it was sent. Await the handle after dropping every clone of the client.
pub fn scripted(responses: Vec<(u16, Value)>) -> (Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut responses = responses.into_iter();
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let query = request
                .uri()
                .query()
                .map(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .into_owned()
                        .collect()
                })
                .unwrap_or_default();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("request body is JSON")
            };
            seen.push(Seen {
                method,
                path,
                query,
                body,
            });
            let (code, value) = responses
                .next()
                .unwrap_or_else(|| (500, status(500, "InternalError", "unscripted request")));
            let response = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&value).expect("json")))
                .expect("response");
            send.send_response(response);
        }
        seen
    });
    (Client::new(service, "default"), task)
}

/// A `Status` body as the API server sends it with an error code.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// The `Status` a Background delete answers with.
pub fn success_status(kind: &str, name: &str, uid: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
           "details": {"name": name, "group": "batch", "kind": kind, "uid": uid}})
}

pub const JOB_UID: &str = "6f1c1d0e-5b8e-4a4e-9a51-0d0c2b1e7a10";

/// A running FlowForge Job as a 1.36 API server serves it.
pub fn job_json() -> Value {
    json!({
      "apiVersion": "batch/v1", "kind": "Job",
      "metadata": {
        "name": "build-42", "namespace": "flowforge", "uid": JOB_UID,
        "resourceVersion": "4711", "generation": 1, "creationTimestamp": "2026-11-28T10:00:00Z",
        "labels": {"job-id": "j-42", "flowforge.io/organization-id": "acme"},
        "annotations": {"flowforge.io/timeout-seconds": "3600"}
      },
      "spec": {
        "parallelism": 1, "completions": 1, "backoffLimit": 0,
        "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": JOB_UID}},
        "manualSelector": false, "podReplacementPolicy": "TerminatingOrFailed",
        "completionMode": "NonIndexed", "suspend": false,
        "template": {
          "metadata": {"labels": {"job-id": "j-42", "batch.kubernetes.io/job-name": "build-42",
                                  "batch.kubernetes.io/controller-uid": JOB_UID}},
          "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 30,
                   "containers": [{"name": "job", "image": "ghcr.io/flowforge/runner:1"}]}
        }
      },
      "status": {"startTime": "2026-11-28T10:00:01Z", "active": 1, "ready": 1, "terminating": 0,
                 "uncountedTerminatedPods": {}}
    })
}

/// A pod of [`job_json`].
pub fn pod_json(name: &str, uid: &str, phase: &str) -> Value {
    json!({
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {
        "name": name, "namespace": "flowforge", "uid": uid, "resourceVersion": "4720",
        "creationTimestamp": "2026-11-28T10:00:01Z",
        "labels": {"job-id": "j-42", "batch.kubernetes.io/job-name": "build-42",
                   "batch.kubernetes.io/controller-uid": JOB_UID},
        "finalizers": ["batch.kubernetes.io/job-tracking"],
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "build-42",
                             "uid": JOB_UID, "controller": true, "blockOwnerDeletion": true}]
      },
      "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 30,
               "containers": [{"name": "job", "image": "ghcr.io/flowforge/runner:1"}]},
      "status": {"phase": phase}
    })
}

pub fn job(v: Value) -> k8s_openapi::api::batch::v1::Job {
    serde_json::from_value(v).expect("job")
}

pub fn pod(v: Value) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(v).expect("pod")
}

/// An empty metadata-only list (kube's `list_metadata`), as the API server answers one.
pub fn empty_metadata_list() -> (u16, Value) {
    (
        200,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
               "metadata": {"resourceVersion": "9"}, "items": []}),
    )
}

/// The answers to a successful TTL delete's lists of the job's labelled PVCs, Secrets and
/// ConfigMaps when it has none.
pub fn no_labelled_objects() -> [(u16, Value); 3] {
    [
        empty_metadata_list(),
        empty_metadata_list(),
        empty_metadata_list(),
    ]
}
