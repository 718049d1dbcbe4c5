//! The web console, `GET /v1/events` and the administrator's routes at the HTTP level, on a
//! real daemon (`jobwarden run`, SQLite):
//!
//! - every page renders, escapes what it shows and carries the security headers; the assets
//!   are embedded;
//! - bad query parameters and ids get a clear error naming them, never a panic;
//! - `GET /v1/events` streams a job's stages and steps and a task's end as Server-Sent Events;
//! - the token rule: with a token, pages and the event stream are readable without it and
//!   never show it, the `/v1` API still needs it, and every button needs it; cross-site
//!   requests are refused, token or not; without a token, actions need a loopback `Host`;
//! - dead letters: `jobwarden dead-letters [--json]`, `jobwarden dead-letters requeue ID`, the
//!   queue page and its requeue button;
//! - `jobwarden report`, `/v1/report` and `/metrics` give the same reclaimed figures.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Backend, Daemon, WAIT};

const TOKEN: &str = "console-test-token-0123456789";

/// A raw HTTP/1.1 exchange: (status, head in lower case, body).
fn raw(addr: &str, request: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    (status, head.to_ascii_lowercase(), rest.to_owned())
}

fn get(d: &Daemon, path: &str) -> (u16, String, String) {
    raw(
        &d.addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            d.addr
        ),
        b"",
    )
}

/// A form POST as a browser sends it: `host` as the Host header, `extra` headers, `form`.
fn post_form(
    d: &Daemon,
    path: &str,
    host: &str,
    extra: &[&str],
    form: &str,
) -> (u16, String, String) {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        form.len()
    );
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    raw(&d.addr, &req, form.as_bytes())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

fn start(config: &str) -> Daemon {
    let d = Daemon::start(Backend::Sqlite, config).expect("sqlite is always there");
    d.wait_loaded();
    d
}

fn with_token(extra: &str) -> (Daemon, tempfile::NamedTempFile) {
    let mut f = tempfile::NamedTempFile::new().expect("token file");
    writeln!(f, "{TOKEN}").expect("write token");
    let config = format!(
        "[server]\ntoken_file = {:?}\n{extra}",
        f.path().display().to_string()
    );
    (start(&config), f)
}

fn wait_for(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pages_render_escape_and_send_security_headers() {
    let d = start("[policy.organization_max]\nacme = \"1h\"\n");
    let evil = "<script>alert('x')</script>";
    let id = d.submit(
        &["--name", evil, "--org", "acme", "--timeout", "1h"],
        &["sleep", "600"],
    );
    for path in [
        "/".to_owned(),
        format!("/jobs/{id}"),
        format!("/jobs/{id}/row"),
        format!("/audit?job={id}"),
        "/queue".to_owned(),
        "/orphans".to_owned(),
        "/policy".to_owned(),
        "/reclaimed".to_owned(),
        "/reclaimed?since=all&org=acme".to_owned(),
        "/?org=acme&stage=running&page=1&size=10".to_owned(),
        "/?fragment=rows".to_owned(),
        format!("/jobs/{id}?fragment=main"),
    ] {
        let (status, head, body) = get(&d, &path);
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(
            header(&head, "content-type"),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        let csp = header(&head, "content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
        assert!(
            !body.contains("<script>alert"),
            "{path} shows the name unescaped"
        );
        if path == "/" || path.starts_with("/jobs/") && !path.contains("fragment") {
            assert!(
                body.contains("&lt;script&gt;alert"),
                "{path}: the name escaped"
            );
        }
    }
    // The jobs page: the row, its time-left bar and where the timeout came from.
    let (_, _, jobs) = get(&d, "/");
    assert!(jobs.contains(&format!("id=\"job-{id}\"")), "{jobs}");
    assert!(jobs.contains("<meter"), "{jobs}");
    assert!(
        jobs.contains("the job&#39;s own") || jobs.contains("the job's own"),
        "{jobs}"
    );
    assert!(jobs.contains("data-live=\"rows\""), "{jobs}");
    // The job page: its ladder (warn, soft_kill, hard_kill, force_delete to come) and the
    // cancel button (no token configured: no token field).
    let (_, _, page) = get(&d, &format!("/jobs/{id}"));
    for step in ["warn", "soft_kill", "hard_kill", "force_delete"] {
        assert!(
            page.contains(&format!("data-step=\"{step}\"")),
            "{step}: {page}"
        );
    }
    assert!(page.contains("Cancel this job"), "{page}");
    assert!(!page.contains("name=\"token\""), "{page}");
    // A filter that leaves the job out: its row answers 204.
    let (status, _, _) = get(&d, &format!("/jobs/{id}/row?org=globex"));
    assert_eq!(status, 204);
    // Policy: the organisation's maximum, as resolve gives it.
    let (_, _, policy) = get(&d, "/policy");
    assert!(policy.contains("acme") && policy.contains("1h"), "{policy}");
    // The assets are in the binary.
    for (path, kind) in [
        ("/assets/console.css", "text/css"),
        ("/assets/console.js", "text/javascript"),
    ] {
        let (status, head, body) = get(&d, path);
        assert_eq!(status, 200, "{path}");
        assert!(header(&head, "content-type").is_some_and(|c| c.starts_with(kind)));
        assert!(body.len() > 500, "{path}");
    }
}

#[test]
fn bad_parameters_and_ids_get_a_clear_error() {
    let d = start("");
    for (path, status, names) in [
        ("/?stage=bogus", 400, "parameter `stage`"),
        ("/?page=0", 400, "parameter `page`"),
        ("/?size=100000", 400, "parameter `size`"),
        ("/?org=..%2F..%2Fx", 400, "parameter `org`"),
        ("/?type=a%20b", 400, "parameter `type`"),
        ("/?fragment=everything", 400, "parameter `fragment`"),
        ("/?unknown=1", 400, "unknown field `unknown`"),
        ("/audit?since=yesterday", 400, "parameter `since`"),
        ("/audit?action=explode", 400, "parameter `action`"),
        ("/audit?job=..", 400, "parameter `job`"),
        ("/audit?limit=-1", 400, "parameter `limit`"),
        ("/reclaimed?since=1x", 400, "parameter `since`"),
        ("/reclaimed?org=-x", 400, "parameter `org`"),
        ("/jobs/not%20a%20job", 404, "invalid job id"),
        ("/jobs/01aaaaaaaaaaaaaaaaaaaaaaaa", 404, "no job with id"),
        (
            "/jobs/01aaaaaaaaaaaaaaaaaaaaaaaa/row",
            404,
            "no job with id",
        ),
        ("/queue?fragment=rows", 400, "parameter `fragment`"),
        ("/v1/report?since=soon", 400, "parameter `since`"),
        ("/v1/report?org=a%2Fb", 400, "parameter `org`"),
    ] {
        let (got, _, body) = get(&d, path);
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(names), "{path}: {names:?} not in {body}");
    }
    let (status, _, body) = post_form(&d, "/queue/abc/requeue", &d.addr, &[], "");
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = post_form(&d, "/queue/1/requeue", &d.addr, &[], "tokn=x");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("the form"), "{body}");
    let (status, body) = d.http("POST", "/v1/dead-letters/0/requeue", &[], None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("task id"), "{body}");
    let (status, body) = d.http("POST", "/v1/dead-letters/99/requeue", &[], None);
    assert_eq!(status, 404, "{body}");
    // The daemon is still fine.
    assert_eq!(d.readyz().0, 200);
}

/// Reads SSE messages from `stream` until `done` holds for the collected (event, data)
/// pairs, or panics after `WAIT`.
fn read_events(
    reader: &mut BufReader<TcpStream>,
    mut done: impl FnMut(&[(String, serde_json::Value)]) -> bool,
) -> Vec<(String, serde_json::Value)> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let mut event = String::new();
    let mut line = String::new();
    while !done(&seen) {
        assert!(Instant::now() < deadline, "events so far: {seen:?}");
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => panic!("the event stream ended; so far: {seen:?}"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => panic!("reading events: {e}"),
        }
        // A chunk-size line of the chunked encoding, or an SSE field.
        let l = line.trim_end();
        if let Some(name) = l.strip_prefix("event: ") {
            event = name.to_owned();
        } else if let Some(data) = l.strip_prefix("data: ") {
            let v = serde_json::from_str(data).unwrap_or(serde_json::Value::Null);
            seen.push((std::mem::take(&mut event), v));
        }
    }
    seen
}

fn subscribe(d: &Daemon, token: Option<&str>) -> (BufReader<TcpStream>, String) {
    let mut s = TcpStream::connect(&d.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        // HTTP/1.0: the body is not chunked, so each line is an SSE line.
        "GET /v1/events HTTP/1.0\r\nHost: {}\r\nAccept: text/event-stream\r\n{auth}\r\n",
        d.addr
    )
    .expect("write");
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => panic!("no response to GET /v1/events: {head}"),
            Ok(_) => {}
            Err(_) if Instant::now() < deadline => continue,
            Err(e) => panic!("GET /v1/events: {e}"),
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    (reader, head)
}

#[test]
fn the_event_stream_carries_stages_steps_and_tasks() {
    let d = start(
        "[policy]\nwarn_before = \"1s\"\ngrace_period = \"1s\"\n[retention]\nterminated = \"0\"\n",
    );
    let (mut events, head) = subscribe(&d, None);
    assert!(head.contains(" 200 "), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let hello = read_events(&mut events, |seen| !seen.is_empty());
    assert_eq!(hello[0].0, "hello");
    assert_eq!(hello[0].1["runtime"], "local");
    let id = d.submit(&["--timeout", "2s"], &["sleep", "600"]);
    // running, warn, terminating + soft_kill, failed (its exit), cleanup (TTL 0), and the
    // workspace task done.
    let seen = read_events(&mut events, |seen| {
        seen.iter()
            .any(|(e, v)| e == "task" && v["job_id"] == id.as_str() && v["kind"] == "workspace")
    });
    let of_job: Vec<String> = seen
        .iter()
        .filter(|(_, v)| v["job_id"] == id.as_str())
        .map(|(e, v)| match e.as_str() {
            "step" => format!("step:{}", v["step"].as_str().unwrap_or("?")),
            "stage" => format!("stage:{}", v["stage"].as_str().unwrap_or("?")),
            "task" => format!(
                "task:{}:{}",
                v["kind"].as_str().unwrap_or("?"),
                v["result"].as_str().unwrap_or("?")
            ),
            other => other.to_owned(),
        })
        .collect();
    let order = |x: &str| {
        of_job
            .iter()
            .position(|e| e == x)
            .unwrap_or_else(|| panic!("{x} not in {of_job:?}"))
    };
    assert!(order("stage:running") < order("step:warn"), "{of_job:?}");
    assert!(order("step:warn") < order("step:soft_kill"), "{of_job:?}");
    assert!(
        order("stage:terminating") < order("stage:failed"),
        "{of_job:?}"
    );
    assert!(order("stage:failed") < order("stage:cleanup"), "{of_job:?}");
    assert!(
        order("stage:cleanup") < order("task:workspace:done"),
        "{of_job:?}"
    );
    let soft = seen
        .iter()
        .find(|(e, v)| e == "step" && v["step"] == "soft_kill")
        .expect("soft_kill");
    assert!(
        soft.1["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("timeout")),
        "{soft:?}"
    );
}

/// `GET path` of the JSON API with the token.
fn api_get(d: &Daemon, path: &str) -> serde_json::Value {
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = d.http("GET", path, &[("Authorization", &auth)], None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

#[test]
fn the_token_rule_reading_is_open_acting_needs_the_token() {
    let (d, _token_file) = with_token("");
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = d.http(
        "POST",
        "/v1/jobs",
        &[("Authorization", &auth)],
        Some(br#"{"command": ["sleep", "600"], "timeout": "1h"}"#),
    );
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).expect("job")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let stage = |d: &Daemon| {
        api_get(d, &format!("/v1/jobs/{id}"))["stage"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    // The API keeps its rule.
    let (status, _) = d.http("GET", "/v1/jobs", &[], None);
    assert_eq!(status, 401);
    let (status, _) = d.http("GET", "/v1/dead-letters", &[], None);
    assert_eq!(status, 401);
    let (status, _) = d.http("GET", "/v1/report", &[], None);
    assert_eq!(status, 401);
    // Pages and the event stream need no token and never show it.
    for path in [
        "/",
        &format!("/jobs/{id}"),
        "/audit",
        "/queue",
        "/orphans",
        "/policy",
        "/reclaimed",
    ] {
        let (status, _, body) = get(&d, path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(TOKEN), "{path} shows the token");
    }
    let (_, _, page) = get(&d, &format!("/jobs/{id}"));
    assert!(page.contains("type=\"password\" name=\"token\""), "{page}");
    let (_, head) = subscribe(&d, None);
    assert!(head.contains(" 200 "), "{head}");
    // The cancel button: refused without the token and with a wrong one, nothing done.
    let host = d.addr.clone();
    let origin = format!("Origin: http://{host}");
    for form in ["", "token=", "token=wrong-token-0123456789"] {
        let (status, _, body) = post_form(
            &d,
            &format!("/jobs/{id}/cancel"),
            &host,
            &[origin.as_str()],
            form,
        );
        assert_eq!(status, 401, "{form:?}: {body}");
        assert!(!body.contains(TOKEN), "{body}");
        assert!(body.contains("needs the API token"), "{body}");
    }
    assert_eq!(stage(&d), "running");
    // Cross-site: refused even with the token.
    for cross in ["Origin: http://evil.example", "Sec-Fetch-Site: cross-site"] {
        let (status, _, body) = post_form(
            &d,
            &format!("/jobs/{id}/cancel"),
            &host,
            &[cross],
            &format!("token={TOKEN}"),
        );
        assert_eq!(status, 403, "{cross}: {body}");
    }
    assert_eq!(stage(&d), "running");
    // With the token: 303 back to the job, which is cancelled.
    let (status, head, _) = post_form(
        &d,
        &format!("/jobs/{id}/cancel"),
        &host,
        &[origin.as_str(), "Sec-Fetch-Site: same-origin"],
        &format!("token={TOKEN}"),
    );
    assert_eq!(status, 303, "{head}");
    assert_eq!(
        header(&head, "location"),
        Some(format!("/jobs/{id}?done=cancelled").as_str())
    );
    assert!(!head.contains(&TOKEN.to_ascii_lowercase()), "{head}");
    wait_for("the cancel's soft kill", || {
        api_get(&d, &format!("/v1/audit?job={id}&action=soft_kill"))
            .as_array()
            .is_some_and(|rows| {
                rows.iter().any(|r| {
                    r["reason"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("cancelled"))
                })
            })
    });
    // The bearer header works for the buttons too (a script of one's own).
    let (status, _, body) = post_form(
        &d,
        "/orphans/clean",
        &host,
        &[format!("Authorization: Bearer {TOKEN}").as_str()],
        "",
    );
    assert_eq!(status, 303, "{body}");
}

#[test]
fn without_a_token_actions_need_a_loopback_host() {
    let d = start("");
    let id = d.submit(&["--timeout", "1h"], &["sleep", "600"]);
    // DNS rebinding: a page of evil.example that resolves to 127.0.0.1 sends its own name.
    let (status, _, body) = post_form(
        &d,
        &format!("/jobs/{id}/cancel"),
        "evil.example:7800",
        &["Origin: http://evil.example:7800"],
        "",
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("loopback"), "{body}");
    assert_eq!(d.show(&id).stage.as_str(), "running");
    let port = d.addr.rsplit(':').next().expect("port");
    let (status, _, body) = post_form(
        &d,
        &format!("/jobs/{id}/cancel"),
        &format!("localhost:{port}"),
        &[format!("Origin: http://localhost:{port}").as_str()],
        "",
    );
    assert_eq!(status, 303, "{body}");
    d.wait_step(&id, jobwarden::model::Step::SoftKill);
}

#[test]
fn dead_letters_from_the_cli_the_api_and_the_console() {
    let d = start("");
    // A task that failed for good: dead, with its last error.
    d.store_sql(
        "INSERT INTO cleanup_tasks (dedup_key, job_id, kind, resource_name, payload, priority, \
         state, scheduled_at, attempts, max_attempts, last_error, created_at, updated_at) \
         VALUES ('workspace:01aaaaaaaaaaaaaaaaaaaaaaaa:r1', '01aaaaaaaaaaaaaaaaaaaaaaaa', \
         'workspace', '/nowhere/ws', '{\"run_id\": \"r1\"}', 10, 'dead', 1800000000000000, \
         8, 8, 'removing /nowhere/ws: <permission denied>', 1800000000000000, \
         1800000000000000)",
    );
    let id: i64 = d
        .store_sql("SELECT id FROM cleanup_tasks WHERE state = 'dead'")
        .trim()
        .parse()
        .expect("task id");
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["dead-letters", "--json"])).expect("JSON");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id);
    assert_eq!(
        listed[0]["last_error"],
        "removing /nowhere/ws: <permission denied>"
    );
    let table = d.ok(&["dead-letters"]);
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("LAST ERROR")),
        "{table}"
    );
    assert!(table.contains("<permission denied>"), "{table}");
    // The queue page: the dead letter with its last error (escaped) and a requeue button.
    let (_, _, page) = get(&d, "/queue");
    assert!(page.contains("&lt;permission denied&gt;"), "{page}");
    assert!(page.contains(&format!("/queue/{id}/requeue")), "{page}");
    // Requeue with the button; then it is no dead letter, and a second requeue says so.
    let (status, head, _) = post_form(&d, &format!("/queue/{id}/requeue"), &d.addr, &[], "");
    assert_eq!(status, 303, "{head}");
    assert_eq!(header(&head, "location"), Some("/queue?done=requeued"));
    let state = d.store_sql(&format!(
        "SELECT state, attempts FROM cleanup_tasks WHERE id = {id}"
    ));
    assert!(!state.starts_with("dead"), "{state}");
    let out = d.cli(&["dead-letters", "requeue", &id.to_string()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("no dead-lettered task with id {id}")),
        "{out:?}"
    );
    // Dead again (attempts exhausted by hand): the CLI requeues it.
    d.store_sql(&format!(
        "UPDATE cleanup_tasks SET state = 'dead' WHERE id = {id}"
    ));
    let out = d.ok(&["dead-letters", "requeue", &id.to_string()]);
    assert_eq!(out.trim(), format!("{id} requeued"));
    let out = d.cli(&["dead-letters", "requeue", "x"]);
    assert_eq!(out.code, 2, "{out:?}");
}

#[test]
fn report_api_and_metrics_agree() {
    let d = start(
        "[policy]\nwarn_before = \"0s\"\ngrace_period = \"1s\"\n[policy.organization_max]\nacme = \"2s\"\n[retention]\nterminated = \"0\"\n",
    );
    // A busy loop capped by its organisation: killed at 2 s of the hour it asked for.
    let id = d.submit(
        &["--org", "acme", "--timeout", "1h"],
        &["sh", "-c", "while :; do :; done"],
    );
    d.wait_finished(&id);
    // Its workspace removed after the TTL 0: bytes in the report too.
    wait_for("the workspace's removal", || {
        d.audit(&id)
            .iter()
            .any(|r| r.action.as_str() == "ttl_cleanup" && r.resource_type == "workspace")
    });
    let soft = d
        .audit(&id)
        .into_iter()
        .find(|r| r.action.as_str() == "soft_kill")
        .expect("soft_kill row");
    let usage = soft.details.as_ref().expect("details")["reclaimed"].clone();
    assert_eq!(usage["basis"], "process_group", "{usage}");
    assert!(
        usage["cpu_cores"].as_f64().is_some_and(|c| c > 0.05),
        "a busy loop: {usage}"
    );
    assert!(
        usage["memory_bytes"].as_u64().is_some_and(|m| m > 0),
        "{usage}"
    );
    assert!(
        usage["bound"]
            .as_str()
            .is_some_and(|b| b.contains("uncapped timeout of 1h")),
        "{usage}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&d.ok(&["report", "--json"])).expect("JSON");
    let total = &report["total"];
    assert_eq!(total["kills"], 1, "{report}");
    let cpu = total["cpu_seconds"].as_f64().expect("cpu");
    // About the hour it was spared, at the rate it ran: far more than the 2 s it ran.
    assert!(cpu > 100.0, "{report}");
    assert_eq!(total["cpu_unknown"], 0, "{report}");
    assert_eq!(report["by_org"][0]["org"], "acme", "{report}");
    let text = d.ok(&["report", "--since", "1h", "--org", "acme"]);
    assert!(text.contains("acme") && text.contains("Method:"), "{text}");
    // /metrics: the same figure for the last 7 days once refreshed (every 10 s; an earlier
    // refresh may have seen the kill before the run's exit was recorded).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = d.http("GET", "/metrics", &[], None);
        let line = metrics
            .lines()
            .find(|l| l.starts_with("jobwarden_reclaimed_cpu_seconds{org=\"acme\"}"));
        let v = line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if v.is_some_and(|v| (v - cpu).abs() < 1e-6 * cpu.max(1.0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics does not show {cpu} CPU-seconds for acme: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The page shows the same total.
    let (_, _, page) = get(&d, "/reclaimed?since=all");
    assert!(
        page.contains(&jobwarden::reclaimed::format_number(cpu)),
        "{page}"
    );
    assert!(
        page.contains(
            jobwarden::reclaimed::METHOD
                .split(' ')
                .take(6)
                .collect::<Vec<_>>()
                .join(" ")
                .as_str()
        )
    );
}
