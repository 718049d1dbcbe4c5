//! Object storage goes away mid-cleanup: a private moto server (the shared one on 55433 is
//! never touched) holds a finished job's artifacts; it is paused with SIGSTOP (moto keeps its
//! data in memory, so a restart would lose the bucket) just before the artifact retention tasks
//! fall due, and resumed with SIGCONT.
//!
//! While it is paused: `/readyz` says not-ready and names the artifact store; every artifact
//! task fails, records its error, is audited as a failed attempt, and is retried later (its
//! next attempt scheduled in the future: backoff) with its attempts growing, and none is
//! dead-lettered during the short outage; the local cleanup (workspace, log) is unaffected.
//! Once it is back: ready again, every task completes, every object is gone, and each prefix's
//! deletion is audited.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use jobwarden::model::{AuditAction, Outcome};
use rustix::process::Signal;

const BUCKET: &str = "jw-fault";
const PREFIX: &str = "pfx";

/// A moto S3 server of our own, killed on drop.
struct PrivateMoto {
    child: Child,
    addr: String,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl PrivateMoto {
    fn start() -> Option<PrivateMoto> {
        let dir = tempfile::Builder::new()
            .prefix("jw-moto-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("log");
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let msg = format!(
                    "moto_server cannot be started ({e}): run scripts/start-moto.sh once (it \
                     installs moto[server]) and re-run"
                );
                assert!(!require_servers(), "{msg}");
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!("\n!!! SKIPPED fault_s3: {msg}\n").as_bytes(),
                );
                return None;
            }
        };
        let addr = format!("127.0.0.1:{port}");
        let mut moto = PrivateMoto {
            child,
            endpoint: format!("http://{addr}"),
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(&moto.addr).is_ok() {
                let (status, _) =
                    http_timeout(&moto.addr, "GET", "/moto-api/", &[], None, SLOW_WAIT);
                if status == 200 {
                    break;
                }
            }
            if let Some(status) = moto.child.try_wait().expect("try_wait") {
                panic!(
                    "moto_server exited with {status}: {}",
                    std::fs::read_to_string(moto._dir.path().join("moto.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (status, body) = moto.request("PUT", &format!("/{BUCKET}"), None);
        assert_eq!(status, 200, "creating the bucket: {body}");
        Some(moto)
    }

    fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
        http_timeout(&self.addr, method, path, &[], body, SLOW_WAIT)
    }

    /// Keys under `prefix` (moto accepts unsigned requests).
    fn keys(&self, prefix: &str) -> Vec<String> {
        let (status, body) = self.request(
            "GET",
            &format!("/{BUCKET}?list-type=2&prefix={prefix}"),
            None,
        );
        assert_eq!(status, 200, "listing {prefix}: {body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    fn signal(&self, sig: Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
            .expect("pid");
        rustix::process::kill_process(pid, sig).expect("signal moto");
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One artifact retention task as the store holds it.
#[derive(Debug, Clone)]
struct TaskRow {
    key: String,
    state: String,
    attempts: u32,
    last_error: String,
    scheduled_after_update: bool,
}

fn artifact_tasks(d: &Daemon, job: &str) -> Vec<TaskRow> {
    d.store_sql(&format!(
        "SELECT dedup_key, state, attempts, scheduled_at > updated_at, \
         replace(replace(coalesce(last_error, ''), char(10), ' '), '|', '/') \
         FROM cleanup_tasks WHERE job_id = '{job}' AND kind = 'artifact_prefix' ORDER BY id"
    ))
    .lines()
    .map(|l| {
        let c: Vec<&str> = l.splitn(5, '|').collect();
        TaskRow {
            key: c[0].to_owned(),
            state: c[1].to_owned(),
            attempts: c[2].parse().expect("attempts"),
            scheduled_after_update: c[3] == "1",
            last_error: c.get(4).copied().unwrap_or_default().to_owned(),
        }
    })
    .collect()
}

#[test]
fn s3_paused_mid_cleanup() {
    let Some(moto) = PrivateMoto::start() else {
        return;
    };
    // The three artifact kinds fall due one second apart, so that separate workers take them
    // (one worker runs its claimed tasks one after another).
    let cfg = format!(
        r#"
[policy]
global_default = "1h"

[retention]
successful = "1h"
failed = "1h"
terminated = "1h"

[retention.artifacts]
partial = "4s"
logs = "5s"
artifacts = "6s"

[artifacts]
url = "s3://{BUCKET}/{PREFIX}"
endpoint = "{}"
region = "us-east-1"
access_key_id = "test"
secret_access_key = "test"
allow_http = true

[queue]
workers = 4
max_attempts = 30
backoff_initial = "1s"
backoff_max = "2s"
"#,
        moto.endpoint
    );
    // A short client timeout: against a paused server every request would otherwise wait 30 s.
    let opts = SpawnOpts {
        env: vec![
            ("AWS_TIMEOUT".into(), "1s".into()),
            ("AWS_CONNECT_TIMEOUT".into(), "1s".into()),
        ],
        ..SpawnOpts::default()
    };
    let Some(d) = Daemon::start_opts(Backend::Sqlite, &cfg, &[], opts) else {
        return;
    };
    let upload = format!(
        "set -e; b={}/{BUCKET}/{PREFIX}; i=$FLOWFORGE_JOB_ID; \
         for p in partial/$i logs/$i jobs/acme/$i; do for n in 1 2; do \
         curl -fsS -X PUT --data-binary x$n \"$b/$p/o$n\" >/dev/null; done; done",
        moto.endpoint
    );
    let id = d.submit_sh(&["--org", "acme", "--timeout", "1h"], &upload);
    let j = d.wait_finished(&id);
    assert_eq!(
        j.outcome,
        Some(Outcome::Succeeded),
        "uploads failed: {j:#?}"
    );
    let prefixes = [
        format!("{PREFIX}/partial/{id}/"),
        format!("{PREFIX}/logs/{id}/"),
        format!("{PREFIX}/jobs/acme/{id}/"),
    ];
    for p in &prefixes {
        assert_eq!(moto.keys(p).len(), 2, "objects under {p}");
    }
    let finished = j.finished_at.expect("finished");
    moto.signal(Signal::STOP);
    let paused_at = jobwarden::clock::now();
    assert!(
        ms_between(paused_at, plus(finished, 4)) > 0,
        "too slow: the first artifact task fell due before moto was paused"
    );

    // Not ready while the artifact store does not answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = http_timeout(&d.addr, "GET", "/readyz", &[], None, SLOW_WAIT);
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status}: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains("artifacts unreachable"), "{body}");

    // Every artifact task fails at least twice, and is retried later each time: each is seen
    // pending again after its second attempt (two failures recorded, a retry scheduled in the
    // future). A failed attempt takes ~4.5 s here (the client retries 3 times, 1 s timeout).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut backed_off: BTreeMap<String, TaskRow> = BTreeMap::new();
    loop {
        let tasks = artifact_tasks(&d, &id);
        for t in &tasks {
            assert_ne!(
                t.state, "dead",
                "dead-lettered during a short outage: {t:?}"
            );
            assert_ne!(t.state, "done", "completed while S3 was paused: {t:?}");
            if t.state == "pending"
                && t.attempts >= 2
                && t.scheduled_after_update
                && !t.last_error.is_empty()
            {
                backed_off.insert(t.key.clone(), t.clone());
            }
        }
        if tasks.len() == 3 && backed_off.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "artifact tasks did not fail twice within 90 s: {tasks:#?}; seen backing off: \
             {backed_off:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let failing: Vec<TaskRow> = backed_off.into_values().collect();
    for t in &failing {
        assert!(
            t.last_error.contains(&moto.endpoint) || t.last_error.contains("127.0.0.1"),
            "the error should name the server: {t:?}"
        );
    }
    let failed_rows: Vec<_> = d
        .audit(&id)
        .into_iter()
        .filter(|r| r.resource_type == "object_prefix" && !r.success)
        .collect();
    assert!(
        failed_rows.len() >= 6
            && failed_rows
                .iter()
                .all(|r| r.error_message.as_deref().is_some_and(|e| !e.is_empty())),
        "every failed attempt is audited with its error: {failed_rows:#?}"
    );
    // The local cleanup went on: the log file follows its own 5 s retention.
    // (The workspace is kept for the 1 h TTL.)

    moto.signal(Signal::CONT);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tasks = artifact_tasks(&d, &id);
        if tasks.len() == 3 && tasks.iter().all(|t| t.state == "done") {
            break;
        }
        assert!(
            tasks.iter().all(|t| t.state != "dead"),
            "dead-lettered: {tasks:#?}"
        );
        assert!(
            Instant::now() < deadline,
            "artifact tasks not done 60 s after S3 returned: {tasks:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for p in &prefixes {
        assert_eq!(moto.keys(p), Vec::<String>::new(), "objects left under {p}");
    }
    let audit = d.audit(&id);
    for p in &prefixes {
        let name = format!(
            "/{}",
            p.trim_start_matches(&format!("{PREFIX}/"))
                .trim_end_matches('/')
        );
        let ok: Vec<_> = audit
            .iter()
            .filter(|r| {
                r.action == AuditAction::TtlCleanup && r.success && r.resource_name.ends_with(&name)
            })
            .collect();
        assert_eq!(ok.len(), 1, "one successful deletion of {p}: {audit:#?}");
        assert!(ok[0].reason.contains("deleted 2 objects"), "{:#?}", ok[0]);
        // Its failed attempts came first, under the same resource name.
        let failed_before = audit
            .iter()
            .filter(|r| !r.success && r.resource_name == ok[0].resource_name && r.id < ok[0].id)
            .count();
        assert!(
            failed_before >= 2,
            "{p}: {failed_before} failed attempts audited before the deletion: {audit:#?}"
        );
    }
    assert!(!d.log(&id).exists(), "the local log was not cleaned");
    let (status, body) = http_timeout(&d.addr, "GET", "/readyz", &[], None, SLOW_WAIT);
    assert_eq!(status, 200, "{body}");
}
