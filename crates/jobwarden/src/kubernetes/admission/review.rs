//! The admission.k8s.io/v1 `AdmissionReview` as the API server sends it and expects it back,
//! and the RFC 6902 JSON Patch a mutating answer carries. Pure.
//!
//! Only the fields jobwarden reads are typed; the rest of a request is ignored, so a newer API
//! server's additions never break the webhook. A body that is not an AdmissionReview v1 with a
//! request is a [`ReviewError`], answered 400 naming what is wrong and where.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `apiVersion` of the only AdmissionReview version jobwarden speaks.
pub const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// Why a body is not an AdmissionReview jobwarden can answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or a field of the wrong type (the path names it).
    #[error("the body is not an AdmissionReview: {0}")]
    Json(String),
    /// Another apiVersion or kind.
    #[error(
        "expected apiVersion \"admission.k8s.io/v1\" and kind \"AdmissionReview\", got {api_version:?} and {kind:?} (admissionReviewVersions must be [\"v1\"])"
    )]
    Version {
        /// The body's `apiVersion`.
        api_version: String,
        /// The body's `kind`.
        kind: String,
    },
    /// No `request` (a response, or an empty review).
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// `request.uid` missing or empty: the answer could not be matched to it.
    #[error("request.uid is missing or empty")]
    NoUid,
    /// A CREATE without `request.object`.
    #[error("request.object is missing: a {operation} request carries the object")]
    NoObject {
        /// The operation.
        operation: String,
    },
    /// The object's fields jobwarden reads have the wrong type.
    #[error("request.object: {0}")]
    Object(String),
}

/// `request.kind` / `request.resource`: group, version and kind (or resource).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct GroupVersionKind {
    /// API group (`batch`; empty for the core group).
    pub group: String,
    /// Version (`v1`).
    pub version: String,
    /// Kind (`Job`, `CronJob`).
    pub kind: String,
}

/// `request.userInfo`: who made the request (recorded with a denial).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct UserInfo {
    /// User name.
    pub username: String,
}

/// `request` of an AdmissionReview.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Copied to `response.uid`.
    #[serde(default)]
    pub uid: String,
    /// The object's kind, after conversion to the version the webhook asked for.
    #[serde(default)]
    pub kind: GroupVersionKind,
    /// The object's name (empty with `generateName`).
    #[serde(default)]
    pub name: Option<String>,
    /// The object's namespace (the object itself may leave it out on CREATE).
    #[serde(default)]
    pub namespace: Option<String>,
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT`.
    #[serde(default)]
    pub operation: String,
    /// The requesting user.
    #[serde(default)]
    pub user_info: UserInfo,
    /// The object as it would be stored (null for DELETE).
    #[serde(default)]
    pub object: Option<Value>,
    /// The object before an UPDATE or DELETE.
    #[serde(default)]
    pub old_object: Option<Value>,
    /// A dry-run request: answered as any other, with no side effect (no audit row).
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// The operation's options (`CreateOptions`, …); not read.
    #[serde(default)]
    pub options: Option<Value>,
}

impl AdmissionRequest {
    /// `dryRun: true`.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run == Some(true)
    }
}

/// The envelope of a request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    request: Option<AdmissionRequest>,
}

/// Parses a webhook request body.
pub fn parse_review(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let review: ReviewIn = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ReviewError::Json(inner.to_string())
        } else {
            ReviewError::Json(format!("{path}: {inner}"))
        }
    })?;
    if review.api_version != REVIEW_API_VERSION || review.kind != "AdmissionReview" {
        return Err(ReviewError::Version {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    if request.uid.trim().is_empty() {
        return Err(ReviewError::NoUid);
    }
    Ok(request)
}

/// One RFC 6902 operation. Only `add` and `replace` are ever sent: nothing is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchOp {
    /// `add` or `replace`.
    pub op: &'static str,
    /// JSON Pointer (RFC 6901), keys escaped with [`escape`].
    pub path: String,
    /// The value.
    pub value: Value,
}

impl PatchOp {
    /// `{"op": "add", …}`: creates the member (or sets it when it exists).
    pub fn add(path: impl Into<String>, value: Value) -> Self {
        PatchOp {
            op: "add",
            path: path.into(),
            value,
        }
    }

    /// `{"op": "replace", …}`: the member must exist.
    pub fn replace(path: impl Into<String>, value: Value) -> Self {
        PatchOp {
            op: "replace",
            path: path.into(),
            value,
        }
    }
}

/// A key as one JSON Pointer reference token: `~` as `~0`, `/` as `~1` (in this order).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `response.status` of a denial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// HTTP-like code the API server returns to the client (403).
    pub code: u16,
    /// `Forbidden`.
    pub reason: &'static str,
    /// What the client sees after `admission webhook "…" denied the request: `.
    pub message: String,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answer {
    /// Admit the object.
    pub allowed: bool,
    /// Changes to the object (mutating webhook only; empty: none).
    pub patch: Vec<PatchOp>,
    /// Shown to the client (`kubectl` prints them as `Warning: …`).
    pub warnings: Vec<String>,
    /// Why it was denied.
    pub denial: Option<String>,
}

impl Answer {
    /// Admitted unchanged, without a word.
    pub fn allow() -> Self {
        Answer {
            allowed: true,
            ..Answer::default()
        }
    }
}

/// The AdmissionReview that answers request `uid`.
pub fn response(uid: &str, answer: &Answer) -> Value {
    let mut response = serde_json::Map::new();
    response.insert("uid".into(), Value::String(uid.to_owned()));
    response.insert("allowed".into(), Value::Bool(answer.allowed));
    if let Some(message) = &answer.denial {
        let status = Status {
            code: 403,
            reason: "Forbidden",
            message: message.clone(),
        };
        response.insert(
            "status".into(),
            serde_json::to_value(status).unwrap_or(Value::Null),
        );
    }
    if answer.allowed && !answer.patch.is_empty() {
        // Serialising a list of ops with string paths and JSON values cannot fail.
        let json = serde_json::to_vec(&answer.patch).unwrap_or_default();
        response.insert("patchType".into(), Value::String("JSONPatch".into()));
        response.insert(
            "patch".into(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(json)),
        );
    }
    if !answer.warnings.is_empty() {
        response.insert(
            "warnings".into(),
            Value::Array(
                answer
                    .warnings
                    .iter()
                    .map(|w| Value::String(w.clone()))
                    .collect(),
            ),
        );
    }
    let mut review = BTreeMap::new();
    review.insert("apiVersion", Value::String(REVIEW_API_VERSION.into()));
    review.insert("kind", Value::String("AdmissionReview".into()));
    review.insert("response", Value::Object(response));
    serde_json::to_value(review).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_escaped_tilde_first() {
        assert_eq!(
            escape("flowforge.io/timeout-seconds"),
            "flowforge.io~1timeout-seconds"
        );
        assert_eq!(escape("a~/b"), "a~0~1b");
        assert_eq!(escape("job-id"), "job-id");
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        let e = parse_review(b"{").expect_err("not JSON");
        assert!(matches!(e, ReviewError::Json(_)), "{e}");
        let e = parse_review(br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u"}}"#)
            .expect_err("v1beta1");
        assert!(e.to_string().contains("admission.k8s.io/v1beta1"), "{e}");
        let e =
            parse_review(br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#)
                .expect_err("no request");
        assert_eq!(e, ReviewError::NoRequest);
        let e = parse_review(br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}}"#)
            .expect_err("no uid");
        assert_eq!(e, ReviewError::NoUid);
        let e = parse_review(br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u", "dryRun": "yes"}}"#)
            .expect_err("dryRun is a bool");
        assert!(e.to_string().contains("request.dryRun"), "{e}");
    }

    #[test]
    fn the_response_echoes_the_uid_and_carries_the_patch_in_base64() {
        let answer = Answer {
            allowed: true,
            patch: vec![PatchOp::add("/metadata/labels/job-id", json!("x"))],
            warnings: vec!["w".into()],
            denial: None,
        };
        let v = response("u-1", &answer);
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "u-1");
        assert_eq!(v["response"]["allowed"], true);
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().expect("patch"))
            .expect("base64");
        let ops: Value = serde_json::from_slice(&patch).expect("JSON");
        assert_eq!(
            ops,
            json!([{"op": "add", "path": "/metadata/labels/job-id", "value": "x"}])
        );
        assert_eq!(v["response"]["warnings"], json!(["w"]));

        let denied = response(
            "u-2",
            &Answer {
                allowed: false,
                denial: Some("no".into()),
                ..Answer::default()
            },
        );
        assert_eq!(
            denied["response"],
            json!({"uid": "u-2", "allowed": false,
                   "status": {"code": 403, "reason": "Forbidden", "message": "no"}})
        );
        // Admitted unchanged: no patch fields at all.
        let plain = response("u-3", &Answer::allow());
        assert_eq!(plain["response"], json!({"uid": "u-3", "allowed": true}));
    }
}
