//! Admission webhook latency (`cargo bench -p jobwarden --bench admission`): p50 and p99 of
//! AdmissionReview round trips over HTTPS on loopback at a fixed rate (200 requests/s by
//! default; `-- --rate 200 --seconds 10 --rounds 3`). The issue's target: p99 under 5 ms.
//!
//! The server is the one `run --runtime kubernetes` starts (`admission::start`: TLS with a
//! certificate made by openssl for this run, the routes, the denial audit queue into a SQLite
//! store in a temp dir), on its own tokio runtime. The client (reqwest, trusting only the run's
//! CA, keep-alive as the API server keeps its connections) sends open-loop: each request is
//! its own task, started at its slot whether or not earlier ones have answered, and timed from
//! the moment it is sent to the moment its whole body has arrived.
//!
//! Three series per round, interleaved so the machine's noise hits each alike:
//! - `echo` (the baseline): the same AdmissionReview body to a handler on the same TLS stack
//!   that answers a fixed "allowed" without reading it: transport, TLS and HTTP alone;
//! - `mutate`: an unlabelled Job, answered with its 8-operation JSON Patch;
//! - `validate`: a Job over its organisation's maximum, denied (its audit row queued and
//!   written to SQLite by the writer task meanwhile);
//! - `mutate, new connection each`: as `mutate`, with a client that keeps no idle connection,
//!   so every request pays a TCP connect and a full TLS handshake (the worst case, should the
//!   API server not reuse its connections).
//!
//! A `harness = false` program: per round p50 / p99 / max of each series, then the medians
//! over the rounds and the difference to the baseline's.

#[path = "../tests/tls_support/mod.rs"]
mod tls_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobwarden::config::Config;
use jobwarden::kubernetes::admission::{self, Mode, Plan, server, tls};
use jobwarden::metrics::{AdmissionWebhook, Metrics};
use jobwarden::store::Store;
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
"#;

struct Options {
    rate: u32,
    seconds: u64,
    rounds: usize,
}

fn options() -> Options {
    let mut o = Options {
        rate: 200,
        seconds: 10,
        rounds: 3,
    };
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| -> Option<u64> {
        let i = args.iter().position(|a| a == flag)?;
        match args.get(i + 1).and_then(|v| v.parse::<u64>().ok()) {
            Some(n) if n > 0 => Some(n),
            _ => {
                eprintln!("{flag}: expected a positive whole number");
                std::process::exit(2);
            }
        }
    };
    if let Some(r) = value("--rate") {
        o.rate = u32::try_from(r).unwrap_or(u32::MAX);
    }
    if let Some(s) = value("--seconds") {
        o.seconds = s;
    }
    if let Some(r) = value("--rounds") {
        o.rounds = usize::try_from(r).unwrap_or(1);
    }
    o
}

/// An AdmissionReview for the CREATE of a Job in `flowforge`, as the API server sends it.
fn review(annotations: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "batch", "version": "v1", "kind": "Job"},
            "resource": {"group": "batch", "version": "v1", "resource": "jobs"},
            "name": "build-7",
            "namespace": "flowforge",
            "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": {
                "kind": "Job", "apiVersion": "batch/v1",
                "metadata": {"name": "build-7", "namespace": "flowforge",
                             "creationTimestamp": null, "annotations": annotations},
                "spec": {
                    "parallelism": 1, "completions": 1, "backoffLimit": 6,
                    "completionMode": "NonIndexed", "suspend": false,
                    "template": {
                        "metadata": {"creationTimestamp": null},
                        "spec": {
                            "containers": [{"name": "main", "image": "ghcr.io/flowforge/runner:1",
                                            "command": ["make", "test"], "resources": {}}],
                            "restartPolicy": "Never", "terminationGracePeriodSeconds": 30,
                            "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler"
                        }
                    }
                },
                "status": {}
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// One series: its name, client, path and body, and what its answer must contain.
struct Series {
    name: &'static str,
    client: reqwest::Client,
    url: String,
    body: Arc<Vec<u8>>,
    expect: &'static str,
}

/// Sends `rate` requests a second for `seconds`; the latencies (ms, sorted) and the failures.
async fn drive(s: &Series, rate: u32, seconds: u64) -> (Vec<f64>, usize) {
    let n = rate as u64 * seconds;
    let every = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        tokio::time::sleep_until(start + every * u32::try_from(i).unwrap_or(u32::MAX)).await;
        let client = s.client.clone();
        let url = s.url.clone();
        let body = s.body.clone();
        let expect = s.expect;
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let resp = client
                .post(&url)
                .header("content-type", "application/json")
                .body((*body).clone())
                .send()
                .await;
            let ok = match resp {
                Ok(r) if r.status().is_success() => {
                    r.text().await.map(|t| t.contains(expect)).unwrap_or(false)
                }
                _ => false,
            };
            (sent.elapsed().as_secs_f64() * 1000.0, ok)
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok((ms, true)) => lat.push(ms),
            _ => failed += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    (lat, failed)
}

fn q(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let o = options();
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = tls_support::make(dir.path(), "bench", "DNS:localhost,IP:127.0.0.1");
    let text = format!(
        "{CONFIG}\n[admission]\nmode = \"enforce\"\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\n",
        pair.cert.display().to_string(),
        pair.key.display().to_string()
    );
    let config = Config::parse(&text, "bench.toml").expect("config");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let metrics = Arc::new(Metrics::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (webhook, echo) = server_rt.block_on(async {
        let store = Store::open(&format!("sqlite://{}", dir.path().join("jw.db").display()))
            .await
            .expect("store");
        let plan = Plan {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert_file: pair.cert.clone(),
            key_file: pair.key.clone(),
            mode: Mode::Enforce,
            reload_every: tls::RELOAD_EVERY,
        };
        let running = admission::start(&plan, &config, store, metrics.clone(), false, stop_rx.clone())
            .await
            .expect("the webhook starts");
        // The baseline: the same TLS stack, a handler that answers without reading the body.
        let resolver = tls::CertResolver::load(&pair.cert, &pair.key).expect("certificate");
        let tls_config = tls::server_config(resolver).expect("TLS config");
        let answer = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}"#;
        let echo = axum::Router::new().route(
            "/echo",
            axum::routing::post(move || async move {
                ([(axum::http::header::CONTENT_TYPE, "application/json")], answer)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let echo_addr = listener.local_addr().expect("addr");
        tokio::spawn(server::serve_tls(listener, tls_config, echo, stop_rx));
        (running, echo_addr)
    });
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let client = tls_support::client(&pair.ca);
    let fresh = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(&std::fs::read(&pair.ca).expect("CA")).expect("PEM"),
        ])
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let base = format!("https://127.0.0.1:{}", webhook.addr.port());
    let unlabelled = review(json!({"flowforge.io/organization-id": "acme",
                                   "flowforge.io/job-type": "build"}));
    let over = review(json!({"flowforge.io/organization-id": "acme",
                             "flowforge.io/timeout-seconds": "10h"}));
    let series = [
        Series {
            name: "echo (baseline)",
            client: client.clone(),
            url: format!("https://127.0.0.1:{}/echo", echo.port()),
            body: Arc::new(unlabelled.to_string().into_bytes()),
            expect: "\"allowed\":true",
        },
        Series {
            name: "mutate",
            client: client.clone(),
            url: format!("{base}/admission/mutate"),
            body: Arc::new(unlabelled.to_string().into_bytes()),
            expect: "\"patchType\":\"JSONPatch\"",
        },
        Series {
            name: "validate (denied)",
            client: client.clone(),
            url: format!("{base}/admission/validate"),
            body: Arc::new(over.to_string().into_bytes()),
            expect: "\"allowed\":false",
        },
        Series {
            name: "mutate, new connection each",
            client: fresh,
            url: format!("{base}/admission/mutate"),
            body: Arc::new(unlabelled.to_string().into_bytes()),
            expect: "\"patchType\":\"JSONPatch\"",
        },
    ];
    println!(
        "Admission latency over HTTPS on loopback: {} requests/s, {} s per series, {} rounds \
         (request body {} bytes)",
        o.rate,
        o.seconds,
        o.rounds,
        series[1].body.len()
    );
    // Warm up: connections, TLS sessions, the store's first writes.
    client_rt.block_on(async {
        for s in &series {
            drive(s, o.rate, 1).await;
        }
    });
    let mut p50 = vec![Vec::new(); series.len()];
    let mut p99 = vec![Vec::new(); series.len()];
    println!("| round | series | requests | failed | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    for round in 1..=o.rounds {
        for (i, s) in series.iter().enumerate() {
            let (lat, failed) = client_rt.block_on(drive(s, o.rate, o.seconds));
            println!(
                "| {round} | {} | {} | {failed} | {:.2} ms | {:.2} ms | {:.2} ms |",
                s.name,
                lat.len() + failed,
                q(&lat, 0.5),
                q(&lat, 0.99),
                lat.last().copied().unwrap_or(f64::NAN)
            );
            p50[i].push(q(&lat, 0.5));
            p99[i].push(q(&lat, 0.99));
        }
    }
    println!();
    println!("Medians over the rounds (p99 target: under 5 ms):");
    println!("| series | p50 | p99 | p50 over baseline | p99 over baseline |");
    println!("|---|---|---|---|---|");
    let base50 = median(p50[0].clone());
    let base99 = median(p99[0].clone());
    for (i, s) in series.iter().enumerate() {
        let (m50, m99) = (median(p50[i].clone()), median(p99[i].clone()));
        println!(
            "| {} | {m50:.2} ms | {m99:.2} ms | {:+.2} ms | {:+.2} ms |",
            s.name,
            m50 - base50,
            m99 - base99
        );
    }
    let inside = |w: AdmissionWebhook, result: &str| metrics.admission_requests(w, result);
    // The handlers' own time, from /metrics: sum / count of the latency histogram.
    let text = metrics.render();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let mean_us = |w: &str| {
        value(&format!(
            "jobwarden_admission_duration_seconds_sum{{webhook=\"{w}\"}}"
        )) / value(&format!(
            "jobwarden_admission_duration_seconds_count{{webhook=\"{w}\"}}"
        )) * 1e6
    };
    println!();
    println!(
        "Server: mutate answered {} (patched), validate {} (denied); mean time in the handler \
         (body to answer, from /metrics): mutate {:.0} µs, validate {:.0} µs.",
        inside(AdmissionWebhook::Mutate, "patched"),
        inside(AdmissionWebhook::Validate, "denied"),
        mean_us("mutate"),
        mean_us("validate")
    );
    let _ = stop.send(true);
    server_rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), webhook.join()).await;
    });
}
