//! End to end: bad input. CLI flags and config files are refused with exit 2 naming what was
//! wrong; bad HTTP bodies get a 400 naming the field and the daemon keeps serving; unknown
//! ids are 404; a non-loopback listener needs a token and enforces it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use jobwarden::model::Stage;

#[test]
fn bad_cli_flags_exit_2_naming_the_flag() {
    // No daemon needed: these fail before any request.
    let env = [("JOBWARDEN_SERVER", "http://127.0.0.1:9")];
    let out = run_cli(&["submit", "--timeout", "2x", "--", "true"], &env);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("--timeout") && out.stderr.contains("2x"),
        "{}",
        out.stderr
    );
    let out = run_cli(&["submit", "--grace=-1", "--", "true"], &env);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--grace"), "{}", out.stderr);
    // The grammar shared with jobwarden-init: each unit at most once, largest first.
    for bad in ["1h1h", "30m1h"] {
        let out = run_cli(&["submit", "--timeout", bad, "--", "true"], &env);
        assert_eq!(out.code, 2, "--timeout {bad}: {out:?}");
        assert!(
            out.stderr.contains("--timeout") && out.stderr.contains("repeated or out of order"),
            "{}",
            out.stderr
        );
    }
    // A zero timeout is bad usage (2), refused before anything is sent, not the server's
    // 400 (1).
    for flag in ["--timeout", "--heartbeat-timeout"] {
        let out = run_cli(&["submit", flag, "0", "--", "true"], &env);
        assert_eq!(out.code, 2, "{flag} 0: {out:?}");
        assert!(
            out.stderr.contains(flag) && out.stderr.contains("greater than 0"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("cannot reach"), "{}", out.stderr);
    }
    let out = run_cli(&["submit", "--timeout", "5s"], &env);
    assert_eq!(out.code, 2, "submit without a command: {out:?}");
    let out = run_cli(&["submit", "--timeout", "5s", "--"], &env);
    assert_eq!(out.code, 2, "submit with an empty command: {out:?}");
    let out = run_cli(&["audit", "--since", "yesterday"], &env);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("--since") && out.stderr.contains("yesterday"),
        "{}",
        out.stderr
    );
    let out = run_cli(&["jobs", "--server", "ftp://x"], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--server"), "{}", out.stderr);
    // Daemon unreachable: exit 1 with a hint.
    let out = run_cli(&["jobs"], &env);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
}

#[test]
fn bad_config_exits_2_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    let cases = [
        ("[policy]\nglobal_default = \"2x\"\n", "global_default"),
        ("[policy]\nglobal_defualt = \"2h\"\n", "global_defualt"),
        (
            "[policy.organization_max]\nacme = \"0s\"\n",
            "policy.organization_max.acme",
        ),
        (
            "[[hooks]]\non = \"teminating\"\ncommand = [\"true\"]\n",
            "hooks[0].on",
        ),
        ("[policy\n", "line 1"),
        ("[policy]\nwarn_before = \"1h1h\"\n", "warn_before"),
    ];
    for (text, key) in cases {
        std::fs::write(&bad, text).expect("write");
        let out = run_cli(&["config", "check", &bad.display().to_string()], &[]);
        assert_eq!(out.code, 2, "{text:?}: {out:?}");
        assert!(
            out.stderr.contains(&bad.display().to_string()) && out.stderr.contains(key),
            "{text:?}: stderr should name the file and {key:?}: {}",
            out.stderr
        );
    }
    let out = run_cli(&["config", "check", "/nonexistent/jw.toml"], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("/nonexistent/jw.toml"),
        "{}",
        out.stderr
    );

    let good = dir.path().join("good.toml");
    std::fs::write(&good, config("[orphans]\nlocal_min_age = \"0s\"\n")).expect("write");
    let out = run_cli(&["config", "check", &good.display().to_string()], &[]);
    assert_eq!((out.code, out.stdout.trim()), (0, "ok"), "{out:?}");

    // `run` refuses a bad config, promptly, without starting.
    std::fs::write(&bad, "[policy]\nglobal_default = \"2x\"\n").expect("write");
    let data = dir.path().join("data");
    let start = Instant::now();
    let out = run_cli(
        &[
            "run",
            "--config",
            &bad.display().to_string(),
            "--data-dir",
            &data.display().to_string(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("global_default"), "{}", out.stderr);
    assert!(!out.stderr.contains("listening"), "{}", out.stderr);
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// `config check` and `run` share one validation path: a file `config check` calls ok is one
/// `run` accepts, and what `run` refuses `config check` refuses with the same message (the
/// token file, the listen address, the store and artifacts URLs, not only the TOML).
#[test]
fn config_check_refuses_what_run_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short-token");
    std::fs::write(&short, "abcde\n").expect("write");
    let good_token = dir.path().join("token");
    std::fs::write(&good_token, "0123456789abcdef\n").expect("write");
    let missing = dir.path().join("no-such-token");
    let cases = [
        (
            format!("[server]\ntoken_file = {:?}\n", short.display().to_string()),
            "server.token_file",
        ),
        (
            format!(
                "[server]\ntoken_file = {:?}\n",
                missing.display().to_string()
            ),
            "server.token_file",
        ),
        (
            "[server]\nlisten = \"0.0.0.0:7800\"\n".to_owned(),
            "token_file",
        ),
        (
            "[server]\nlisten = \"localhost-ish\"\n".to_owned(),
            "server.listen",
        ),
        ("[store]\nurl = \"mysql://db/jw\"\n".to_owned(), "store.url"),
        (
            "[artifacts]\nurl = \"ftp://bucket\"\n".to_owned(),
            "artifacts.url",
        ),
    ];
    let file = dir.path().join("jw.toml");
    let data = dir.path().join("data");
    for (text, key) in cases {
        std::fs::write(&file, &text).expect("write");
        let path = file.display().to_string();
        let check = run_cli(&["config", "check", &path], &[]);
        let run = run_cli(
            &[
                "run",
                "--config",
                &path,
                "--data-dir",
                &data.display().to_string(),
            ],
            &[],
        );
        assert_eq!(check.code, 2, "config check accepted {text:?}: {check:?}");
        assert_eq!(run.code, 2, "run accepted {text:?}: {run:?}");
        assert!(
            check.stderr.contains(&path) || !key.contains('.'),
            "{text:?}: {}",
            check.stderr
        );
        assert!(check.stderr.contains(key), "{text:?}: {}", check.stderr);
        assert_eq!(check.stderr, run.stderr, "{text:?}: one message for both");
        assert!(
            !data.join("jobwarden.db").exists(),
            "run opened a store for {text:?}"
        );
    }
    // A valid token file off loopback: both accept it (run is not started here).
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"0.0.0.0:7800\"\ntoken_file = {:?}\n",
            good_token.display().to_string()
        ),
    )
    .expect("write");
    let check = run_cli(&["config", "check", &file.display().to_string()], &[]);
    assert_eq!((check.code, check.stdout.trim()), (0, "ok"), "{check:?}");
}

#[test]
fn bad_http_bodies_are_400_naming_the_field() {
    let Some(d) = Daemon::start(Backend::Sqlite, &config("")) else {
        return;
    };
    let cases: [(&[u8], &str); 11] = [
        (br#"{"command":["true"],"timout":"1h"}"#, "timout"),
        // A Job's settings: a local daemon never runs them as a process instead.
        (br#"{"command":["true"],"image":"img:1"}"#, "image"),
        (br#"{"command":["true"],"namespace":"ns"}"#, "namespace"),
        (br#"{"command":"true"}"#, "command"),
        (br#"{"command":["true"],"timeout":"2x"}"#, "timeout"),
        (br#"{"command":["true"],"grace":-1}"#, "grace"),
        (br#"{"command":["true"],"timeout":"0s"}"#, "timeout"),
        (br#"{"command":[]}"#, "command"),
        (br#"{"command":[""]}"#, "command"),
        (br#"{}"#, "command"),
        (b"this is not json", "body"),
    ];
    for (body, field) in cases {
        let (status, resp) = d.http("POST", "/v1/jobs", &[], Some(body));
        let shown = String::from_utf8_lossy(body);
        assert_eq!(status, 400, "{shown}: {resp}");
        let err: serde_json::Value = serde_json::from_str(&resp)
            .unwrap_or_else(|e| panic!("{shown}: error body is not JSON ({e}): {resp}"));
        let msg = err["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{shown}: no `error`: {resp}"));
        assert!(
            msg.contains(field),
            "{shown}: error should name {field:?}: {msg}"
        );
        let (status, _) = d.http("GET", "/healthz", &[], None);
        assert_eq!(status, 200, "the daemon stopped answering after {shown}");
    }
    // Empty body, wrong method, unknown route.
    let (status, _) = d.http("POST", "/v1/jobs", &[], Some(b""));
    assert_eq!(status, 400);
    let (status, resp) = d.http("GET", "/v1/nothing-here", &[], None);
    assert_eq!(status, 404, "{resp}");
    let (status, resp) = d.http("GET", "/v1/audit?action=explode", &[], None);
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("action"), "{resp}");
    // None of it created a job.
    assert!(d.jobs().is_empty(), "a bad request created a job");

    // Unknown ids are 404 on every job route, and in the CLI (exit 1).
    let unknown = "01jzzzzzzzzzzzzzzzzzzzzzzz";
    for (method, path) in [
        ("GET", format!("/v1/jobs/{unknown}")),
        ("POST", format!("/v1/jobs/{unknown}/cancel")),
        ("POST", format!("/v1/jobs/{unknown}/heartbeat")),
        ("GET", "/v1/jobs/not%20an%20id!".to_owned()),
    ] {
        let (status, resp) = d.http(method, &path, &[], None);
        assert_eq!(status, 404, "{method} {path}: {resp}");
        assert!(
            serde_json::from_str::<serde_json::Value>(&resp).is_ok_and(|v| v["error"].is_string()),
            "{resp}"
        );
    }
    let out = d.cli(&["job", "show", unknown]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("404"), "{}", out.stderr);

    // A good submission still works after all that.
    let id = d.submit(&[], &["true"]);
    assert_eq!(
        d.wait_finished(&id).outcome,
        Some(jobwarden::model::Outcome::Succeeded)
    );
    let (status, _) = d.http("GET", "/readyz", &[], None);
    assert_eq!(status, 200);
}

/// One naming rule for organisations and job types, at every way in: the API answers 400
/// naming the field, `submit` exits 2 naming the flag without sending anything, a config entry
/// is refused naming its key. Nothing is created.
#[test]
fn org_and_type_names_are_checked_at_submit_and_in_the_config() {
    let Some(d) = Daemon::start(Backend::Sqlite, &config("")) else {
        return;
    };
    for (body, field) in [
        (r#"{"command":["true"],"org":"../../x"}"#, "org"),
        (r#"{"command":["true"],"org":"ünïcode-org"}"#, "org"),
        (r#"{"command":["true"],"org":"_"}"#, "org"),
        (r#"{"command":["true"],"type":".hidden"}"#, "type"),
    ] {
        let (status, resp) = d.http("POST", "/v1/jobs", &[], Some(body.as_bytes()));
        assert_eq!(status, 400, "{body}: {resp}");
        assert!(
            resp.contains(&format!("field `{field}`: invalid ")),
            "{body}: {resp}"
        );
    }
    for (flag, value) in [
        ("--org", "ünïcode-org"),
        ("--org", "../../x"),
        ("--type", "a b"),
    ] {
        let out = d.cli(&["submit", flag, value, "--", "true"]);
        assert_eq!(out.code, 2, "submit {flag} {value:?}: {out:?}");
        assert!(
            out.stderr.contains(flag) && out.stderr.contains(&format!("{value:?}")),
            "submit {flag} {value:?}: {}",
            out.stderr
        );
    }
    assert!(d.jobs().is_empty(), "a refused name created a job");
    let id = d.submit(&["--org", "acme-1", "--type", "build.fast"], &["true"]);
    assert_eq!(d.get(&id).org.as_deref(), Some("acme-1"));

    let bad = d.root.path().join("names.toml");
    std::fs::write(&bad, "[policy.organization_max]\n\"../../x\" = \"1h\"\n").expect("write");
    let out = run_cli(&["config", "check", &bad.display().to_string()], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("policy.organization_max.\"../../x\"")
            && out.stderr.contains("invalid organisation"),
        "{}",
        out.stderr
    );
}

/// The CLI's tables stay aligned whatever the width of an organisation (over 8 characters)
/// or a type, and an unknown audit action is named in words ("audit action").
#[test]
fn tables_stay_aligned_and_errors_read_cleanly() {
    let Some(d) = Daemon::start(Backend::Sqlite, &config("")) else {
        return;
    };
    let long = d.submit(
        &[
            "--org",
            "engineering-platform",
            "--type",
            "nightly-build",
            "--timeout",
            "1h",
        ],
        &["sleep", "30"],
    );
    let short = d.submit(&["--org", "acme", "--timeout", "1h"], &["sleep", "30"]);
    d.wait_job(&long, "running", |j| j.stage == Stage::Running);
    d.wait_job(&short, "running", |j| j.stage == Stage::Running);
    let table = d.ok(&["jobs"]);
    let lines: Vec<&str> = table.lines().collect();
    let stage_at = lines[0].find("STAGE").expect("STAGE column");
    for id in [&long, &short] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("no row for {id}:\n{table}"));
        assert_eq!(
            row.get(stage_at..stage_at + "running".len()),
            Some("running"),
            "the STAGE column is misaligned:\n{table}"
        );
    }
    let out = d.cli(&["audit", "--action", "explode"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("unknown audit action \"explode\""),
        "{}",
        out.stderr
    );
    let audit = d.ok(&["audit"]);
    let lines: Vec<&str> = audit.lines().collect();
    let action_at = lines[0].find("ACTION").expect("ACTION column");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.get(action_at - 2..action_at) == Some("  ")),
        "the ACTION column is misaligned:\n{audit}"
    );
}

#[test]
fn non_loopback_listen_needs_a_token_and_enforces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data").display().to_string();
    let out = run_cli(&["run", "--data-dir", &data, "--listen", "0.0.0.0:0"], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("token_file"), "{}", out.stderr);

    let short = dir.path().join("short-token");
    std::fs::write(&short, "tiny\n").expect("write");
    let cfg = dir.path().join("short.toml");
    std::fs::write(
        &cfg,
        format!("[server]\ntoken_file = {:?}\n", short.display().to_string()),
    )
    .expect("write");
    let out = run_cli(
        &[
            "run",
            "--config",
            &cfg.display().to_string(),
            "--data-dir",
            &data,
            "--listen",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert_eq!(out.code, 2, "a short token was accepted: {out:?}");

    let token = "e2e-token-0123456789abcdef";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write");
    let cfg = config(&format!(
        "[server]\ntoken_file = {:?}\n",
        token_file.display().to_string()
    ));
    let Some(d) = Daemon::start_with(Backend::Sqlite, &cfg, &["--listen", "0.0.0.0:0"]) else {
        return;
    };
    let (status, resp) = d.http("GET", "/v1/jobs", &[], None);
    assert_eq!(status, 401, "{resp}");
    let (status, _) = d.http(
        "GET",
        "/v1/jobs",
        &[("Authorization", "Bearer wrong-token-0123456789")],
        None,
    );
    assert_eq!(status, 401);
    let (status, resp) = d.http("POST", "/v1/jobs", &[], Some(br#"{"command":["true"]}"#));
    assert_eq!(status, 401, "an unauthenticated submit: {resp}");
    let bearer = format!("Bearer {token}");
    let (status, resp) = d.http("GET", "/v1/jobs", &[("Authorization", &bearer)], None);
    assert_eq!((status, resp.trim()), (200, "[]"));
    let (status, _) = d.http("GET", "/healthz", &[], None);
    assert_eq!(status, 200);

    // The CLI: without the token it fails (exit 1, 401), with JOBWARDEN_TOKEN it works.
    let out = d.cli(&["jobs", "--json"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    let out = run_cli(
        &["submit", "--", "true"],
        &[("JOBWARDEN_SERVER", &d.url), ("JOBWARDEN_TOKEN", token)],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.stdout.trim().to_owned();
    let out = run_cli(
        &["jobs", "--json"],
        &[("JOBWARDEN_SERVER", &d.url), ("JOBWARDEN_TOKEN", token)],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&id), "{out:?}");
}
