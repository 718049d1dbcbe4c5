//! Property-based fuzzing of the HTTP API's inputs: every POST endpoint (`/v1/jobs`,
//! `/v1/jobs/{id}/cancel`, `/v1/jobs/{id}/heartbeat`, `/v1/orphans/clean`) with arbitrary and
//! structure-aware bodies and path segments.
//!
//! Two layers:
//! - the body parser and validator the submit handler uses (`parse_body`, `validate_submit`),
//!   called directly: fast enough for millions of cases;
//! - the real daemon (`jobwarden::daemon::start`, in process, on a temp data dir and SQLite,
//!   listening on loopback) over HTTP: never a 5xx, never a dropped connection, and every 4xx
//!   is a JSON `{"error": …}` naming the field (or saying the body is not valid JSON).
//!
//! Valid submissions only ever name programs under `/nonexistent/`, so nothing is run: the job
//! is recorded and fails to start.
//!
//! Cases: `PROPTEST_CASES` (or `JOBWARDEN_PROPTEST_CASES`) for the parser properties, a
//! twentieth of it for the HTTP ones (a valid submission is a job in the store and a workspace)
//! and a ten-thousandth for `orphans/clean` (each case scans every workspace); the defaults are
//! CI-sized.

mod common;

use std::sync::OnceLock;

use jobwarden::api_types::SubmitRequest;
use jobwarden::daemon::api::{parse_body, validate_submit};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn cfg(default: u32) -> ProptestConfig {
    cfg_scaled(default, 1)
}

/// For the properties that go through the daemon: `PROPTEST_CASES / divisor` cases.
fn cfg_scaled(default: u32, divisor: u32) -> ProptestConfig {
    ProptestConfig {
        cases: common::proptest_cases_scaled(default, divisor),
        ..ProptestConfig::default()
    }
}

/// The submit request's fields.
const FIELDS: &[&str] = &[
    "command",
    "name",
    "org",
    "type",
    "timeout",
    "grace",
    "ttl",
    "heartbeat_timeout",
];

/// Any JSON value.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::String),
        "[0-9]{1,4}[smhdw]?".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A program that cannot exist, so a valid submission never runs anything.
fn safe_program() -> impl Strategy<Value = Value> {
    "[a-z0-9._-]{1,10}".prop_map(|p| Value::String(format!("/nonexistent/jw-fuzz/{p}")))
}

/// A value for `field`: usually of the right type (valid or not), sometimes not.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    let duration = prop_oneof![
        (0u64..100_000).prop_map(|n| json!(n)),
        "[0-9]{1,5}[smhdw]".prop_map(Value::String),
        "[0-9smhdwy.+ -]{0,8}".prop_map(Value::String),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!("0s")),
    ];
    let text = prop_oneof![
        "[a-z0-9-]{1,20}".prop_map(Value::String),
        Just(json!("")),
        "\\PC{0,8}".prop_map(Value::String),
        Just(Value::String("x".repeat(300))),
        Just(json!("a\u{7}b")),
    ];
    let typed = match field {
        "command" => prop_oneof![
            4 => (safe_program(), prop::collection::vec("\\PC{0,8}".prop_map(Value::String), 0..3))
                .prop_map(|(p, mut args)| {
                    args.insert(0, p);
                    Value::Array(args)
                }),
            1 => Just(json!([])),
            1 => Just(json!([""])),
            1 => Just(json!(["/nonexistent/jw-fuzz/a\u{0}b"])),
        ]
        .boxed(),
        "name" | "org" | "type" => text.boxed(),
        _ => duration.boxed(),
    };
    prop_oneof![4 => typed, 1 => json_value()].boxed()
}

/// A submit body: some of the real fields (command most of the time), sometimes an unknown one.
fn submit_body() -> impl Strategy<Value = (Value, Option<String>)> {
    let fields = FIELDS
        .iter()
        .map(|&f| {
            let p = if f == "command" { 0.9 } else { 0.35 };
            proptest::option::weighted(p, field_value(f)).prop_map(move |v| v.map(|v| (f, v)))
        })
        .collect::<Vec<_>>();
    (
        fields,
        proptest::option::weighted(0.15, ("[a-z_]{1,12}", json_value())),
    )
        .prop_map(|(fields, unknown)| {
            let mut m = Map::new();
            for (k, v) in fields.into_iter().flatten() {
                m.insert(k.to_owned(), v);
            }
            let mut extra = None;
            if let Some((k, v)) = unknown
                && !FIELDS.contains(&k.as_str())
            {
                m.insert(k.clone(), v);
                extra = Some(k);
            }
            (Value::Object(m), extra)
        })
}

/// Checks a parse/validate error for an object body: it names a field of the body (or the
/// missing `command`).
fn names_a_field(msg: &str, body: &Value) -> bool {
    let keys: Vec<&String> = body
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    keys.iter()
        .any(|k| msg.contains(&format!("`{k}")) || msg.contains(&format!("{k}`")))
        || msg.contains("`command`")
}

/// What the API must answer for `bytes` posted to `/v1/jobs`, judged by the same functions
/// the handler uses: Ok(()) when the submission is valid, else the error.
fn expected(bytes: &[u8]) -> Result<(), String> {
    let req: SubmitRequest = parse_body(bytes)?;
    validate_submit(&req).map_err(|e| e.to_string())
}

proptest! {
    #![proptest_config(cfg(4096))]

    #[test]
    fn body_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Err(e) = expected(&bytes) {
            prop_assert!(!e.is_empty());
            prop_assert!(
                e.starts_with("invalid request body") || e.starts_with("field `"),
                "{e}"
            );
        }
    }

    #[test]
    fn body_parser_never_panics_on_json(v in json_value()) {
        let bytes = serde_json::to_vec(&v).expect("serialise");
        if let Err(e) = expected(&bytes) {
            prop_assert!(
                e.starts_with("invalid request body") || e.starts_with("field `"),
                "{e}"
            );
            if v.is_object() {
                prop_assert!(names_a_field(&e, &v) || e.contains("unknown field"), "{e}\n{v}");
            }
        }
    }

    #[test]
    fn submit_errors_name_the_field((body, unknown) in submit_body()) {
        let bytes = serde_json::to_vec(&body).expect("serialise");
        match expected(&bytes) {
            // An unknown field is never silently ignored.
            Ok(()) => prop_assert!(unknown.is_none(), "accepted an unknown field: {body}"),
            Err(e) => prop_assert!(names_a_field(&e, &body), "{e}\n{body}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The real daemon, over HTTP

struct Api {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
    /// A job that exists (it failed to start): cancel answers 409, heartbeat 204.
    known: String,
    _dir: tempfile::TempDir,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("jw-fuzz-api-")
            .tempdir()
            .expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let data = dir.path().join("data");
        let opts = jobwarden::daemon::DaemonOptions {
            config: jobwarden::config::Config::default(),
            store_url: format!("sqlite://{}", data.join("jobwarden.db").display()),
            artifacts_url: format!("file://{}", data.join("artifacts").display()),
            data_dir: data,
            listen: "127.0.0.1:0".parse().expect("addr"),
            dry_run: false,
            token: None,
        };
        let running = rt
            .block_on(jobwarden::daemon::start(opts))
            .expect("daemon starts");
        let base = format!("http://{}", running.addr);
        // Kept running for the life of the test binary.
        std::mem::forget(running);
        // A connection per request: a handler that ignores the body (cancel, orphans/clean)
        // lets the server close the connection after answering, and a pooled connection
        // reused at that moment fails on the client side ("connection closed before message
        // completed"), which would be reported as the daemon not answering.
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let known = rt.block_on(async {
            let r = client
                .post(format!("{base}/v1/jobs"))
                .body(r#"{"command":["/nonexistent/jw-fuzz/known"]}"#)
                .send()
                .await
                .expect("submit");
            assert_eq!(r.status().as_u16(), 201);
            let v: Value = r.json().await.expect("json");
            v["id"].as_str().expect("id").to_owned()
        });
        Api {
            rt,
            client,
            base,
            known,
            _dir: dir,
        }
    })
}

/// POSTs `body` to `path`; returns the status and the body.
fn post(path: &str, body: Vec<u8>, content_type: Option<&str>) -> (u16, String) {
    let a = api();
    a.rt.block_on(async {
        let mut req = a.client.post(format!("{}{path}", a.base)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap_or_else(|e| {
            // The whole chain: "error sending request" alone does not say timeout or reset.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            panic!("POST {path}: no answer: {why}")
        });
        let status = r.status().as_u16();
        (status, r.text().await.expect("body"))
    })
}

/// A 4xx must be `{"error": "<non-empty>"}`; a 5xx is never acceptable.
fn check_answer(path: &str, status: u16, body: &str) -> Result<Option<String>, TestCaseError> {
    prop_assert!(status < 500, "POST {path}: {status} {body}");
    if status >= 400 {
        let v: Value = serde_json::from_str(body).map_err(|e| {
            TestCaseError::fail(format!(
                "POST {path}: {status} with a non-JSON body ({e}): {body:?}"
            ))
        })?;
        let msg = v["error"].as_str().unwrap_or_default().to_owned();
        prop_assert!(!msg.is_empty(), "POST {path}: {status} {body}");
        return Ok(Some(msg));
    }
    Ok(None)
}

/// A path segment: arbitrary text, percent-encoded (invalid escapes and non-UTF-8 too).
fn id_segment() -> impl Strategy<Value = String> {
    fn encode(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(b) {
                    (*b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }
    prop_oneof![
        "[0-9a-z]{26}",
        "\\PC{1,30}".prop_map(|s| encode(s.as_bytes())),
        prop::collection::vec(any::<u8>(), 1..20).prop_map(|b| encode(&b)),
        Just("%".to_owned()),
        Just("%zz".to_owned()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("01M8H7K7X32XBXZF41JEQV3EAC".to_owned()),
    ]
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(vec![
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=utf-16",
        "",
    ]))
}

proptest! {
    // Over HTTP, each case a request to the daemon (and a valid one a store write).
    #![proptest_config(cfg_scaled(256, 20))]

    #[test]
    fn post_jobs_answers_4xx_json_naming_the_field(
        (body, _unknown) in submit_body(),
        raw in prop::option::weighted(0.2, prop::collection::vec(any::<u8>(), 0..64)),
        ct in content_type(),
    ) {
        let bytes = raw.unwrap_or_else(|| serde_json::to_vec(&body).expect("serialise"));
        let want = expected(&bytes);
        // Never run anything: a valid submission must name a program that cannot exist.
        if want.is_ok() {
            let req: SubmitRequest = parse_body(&bytes).expect("valid");
            prop_assume!(req.command[0].starts_with("/nonexistent/"));
        }
        let (status, text) = post("/v1/jobs", bytes.clone(), ct);
        let err = check_answer("/v1/jobs", status, &text)?;
        match (want, err) {
            (Ok(()), None) => prop_assert_eq!(status, 201, "{}", text),
            (Err(e), Some(msg)) => {
                prop_assert_eq!(status, 400);
                prop_assert_eq!(msg, e);
            }
            (w, got) => prop_assert!(false, "expected {w:?}, got {status} {got:?} for {:?}", String::from_utf8_lossy(&bytes)),
        }
    }

    #[test]
    fn cancel_and_heartbeat_answer_4xx_json(
        id in prop_oneof![9 => id_segment(), 1 => Just(String::new())],
        known in any::<bool>(),
        heartbeat in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..64),
        ct in content_type(),
    ) {
        let id = if known { api().known.clone() } else { id };
        let path = format!(
            "/v1/jobs/{id}/{}",
            if heartbeat { "heartbeat" } else { "cancel" }
        );
        let (status, text) = post(&path, body, ct);
        let err = check_answer(&path, status, &text)?;
        if known {
            // The job exists and never started: a heartbeat is taken, a cancel refused.
            prop_assert_eq!(status, if heartbeat { 204 } else { 409 }, "{}", text);
        } else {
            prop_assert!(err.is_some(), "POST {path}: {status} {text}");
            prop_assert!(matches!(status, 400 | 404 | 405), "POST {path}: {status} {text}");
        }
    }
}

proptest! {
    // Each case scans the data dir: far fewer cases.
    #![proptest_config(cfg_scaled(32, 10_000))]

    #[test]
    fn orphans_clean_ignores_its_body(
        body in prop::collection::vec(any::<u8>(), 0..64),
        ct in content_type(),
    ) {
        let (status, text) = post("/v1/orphans/clean", body, ct);
        check_answer("/v1/orphans/clean", status, &text)?;
        prop_assert_eq!(status, 200, "{}", text);
        let v: Value = serde_json::from_str(&text).expect("a report");
        prop_assert!(v["orphans"].as_array().is_some_and(|o| o.is_empty()), "{text}");
    }
}

/// GETs `path`; returns the status, the content type and the body.
fn get(path: &str) -> (u16, String, String) {
    let a = api();
    a.rt.block_on(async {
        let r = a
            .client
            .get(format!("{}{path}", a.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: no answer: {e}"));
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, ct, r.text().await.expect("body"))
    })
}

/// A query string of the console's parameters (and others) with arbitrary values.
fn console_query() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "org", "type", "stage", "page", "size", "fragment", "job", "action", "since", "until",
        "limit", "done", "queued", "bogus",
    ]);
    prop::collection::vec((name, id_segment()), 0..4).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

proptest! {
    // The web console: whatever the id or the query, an answer below 500 in HTML (204 for a
    // row the filters leave out), an error page saying what was wrong, never a panic or a
    // hung request.
    #![proptest_config(cfg_scaled(128, 40))]

    #[test]
    fn console_pages_answer_any_id_and_query(
        page in prop::sample::select(vec![
            "/", "/jobs/ID", "/jobs/ID/row", "/audit", "/queue", "/orphans", "/policy",
            "/reclaimed",
        ]),
        id in id_segment(),
        query in console_query(),
    ) {
        let path = format!("{}?{query}", page.replace("ID", &id));
        let (status, ct, body) = get(&path);
        prop_assert!(status < 500, "GET {path}: {status} {body}");
        // A segment like `..` is resolved away by the client: the unknown route's JSON 404.
        let html = ct.starts_with("text/html");
        prop_assert!(
            status == 204 || html || status == 404 && ct.starts_with("application/json"),
            "GET {path}: {status} {ct}"
        );
        if status >= 400 && ct.starts_with("text/html") {
            prop_assert!(body.contains("role=\"alert\""), "GET {path}: {status} {body}");
        }
    }
}

/// A body over the server's size limit: a 4xx JSON error too.
#[test]
fn oversized_body_is_a_4xx_json_error() {
    let big = vec![b' '; 3 << 20];
    let (status, text) = post("/v1/jobs", big, Some("application/json"));
    assert!((400..500).contains(&status), "{status} {text}");
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status} with a non-JSON body ({e}): {text:?}"));
    assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
}
