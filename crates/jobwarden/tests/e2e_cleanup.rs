//! End to end: TTL cleanup through the durable queue, orphans, and `--dry-run` (which decides
//! and audits everything and changes nothing).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use jobwarden::model::{AuditAction, Outcome, Stage, Step};

/// `touch -d '2 hours ago' PATH`: old enough to be an orphan under a 1h minimum age.
fn age(path: &Path) {
    let out = Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(path)
        .output()
        .expect("touch");
    assert!(
        out.status.success(),
        "touch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `touch -h -d '2 hours ago' LINK`: ages the symlink itself, not its target.
fn age_link(path: &Path) {
    let out = Command::new("touch")
        .args(["-h", "-d", "2 hours ago"])
        .arg(path)
        .output()
        .expect("touch");
    assert!(
        out.status.success(),
        "touch -h: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// TTL removes exactly that job's workspace; its log follows the log retention.
fn ttl_cleanup(backend: Backend) {
    let cfg = config(
        r#"
[retention.artifacts]
logs = "3s"
"#,
    );
    let Some(d) = Daemon::start(backend, &cfg) else {
        return;
    };
    let short = d.submit_sh(&["--ttl", "1s"], "echo short > out.txt");
    let long = d.submit_sh(&["--ttl", "1h"], "echo long > out.txt");
    let running = d.submit(&["--timeout", "1h"], &["sleep", "60"]);
    let fin = d.wait_finished(&short);
    assert_eq!(fin.outcome, Some(Outcome::Succeeded));
    d.wait_finished(&long);
    assert!(d.ws(&short).join("out.txt").exists());

    let j = d.wait_job(&short, "cleaned", |j| j.stage == Stage::Cleaned);
    assert!(
        !d.ws(&short).exists(),
        "the expired workspace is still there"
    );
    assert_eq!(
        j.outcome,
        Some(Outcome::Succeeded),
        "cleaning kept the outcome"
    );
    let audit = d.audit(&short);
    let ttl = rows(&audit, AuditAction::TtlCleanup);
    let ws_row = ttl
        .iter()
        .find(|r| r.resource_type == "workspace")
        .unwrap_or_else(|| panic!("no ttl_cleanup row for the workspace: {audit:#?}"));
    assert!(ws_row.success && !ws_row.dry_run, "{ws_row:#?}");
    let finished = fin.finished_at.expect("finished");
    assert!(
        ms_between(plus(finished, 1), ws_row.timestamp) >= 0,
        "cleaned before its TTL: finished {finished}, cleaned {}",
        ws_row.timestamp
    );
    // The log follows its own retention (3 s after the finish), not the job's TTL.
    assert!(d.log(&short).exists(), "the log went with the workspace");
    wait_until("the log to expire", || !d.log(&short).exists());
    let audit = d.wait_audit(&short, "the log's ttl_cleanup row", |r| {
        r.action == AuditAction::TtlCleanup && r.resource_type == "log"
    });
    let log_row = audit
        .iter()
        .find(|r| r.action == AuditAction::TtlCleanup && r.resource_type == "log")
        .expect("log row");
    assert!(
        ms_between(plus(finished, 3), log_row.timestamp) >= 0,
        "log removed early: {log_row:#?}"
    );

    // Everything else is untouched.
    assert!(
        d.ws(&long).join("out.txt").exists(),
        "a job with a longer TTL lost its workspace"
    );
    // Logs follow their own retention whatever the TTL: the long job's log is gone too.
    wait_until("the long job's log to expire", || !d.log(&long).exists());
    assert!(d.log(&running).exists(), "a running job lost its log");
    assert!(d.ws(&running).exists(), "a running job lost its workspace");
    assert_eq!(d.get(&running).stage, Stage::Running);
    assert_eq!(d.get(&long).stage, Stage::Completed);
    assert!(
        rows(&d.audit(&long), AuditAction::TtlCleanup)
            .iter()
            .all(|r| r.resource_type == "log"),
        "only the long job's log may have been cleaned"
    );
    assert!(rows(&d.audit(&running), AuditAction::TtlCleanup).is_empty());
    // The cleaned job is still listed and shown.
    let shown = d.show(&short);
    assert_eq!(shown.stage, Stage::Cleaned);
    assert!(d.jobs().iter().any(|j| j.id == short));
}

/// Orphans: old unknown ids are reported and removed; live jobs, young entries and names
/// jobwarden could not have created (dot-dirs, names that are not generated ids, files where
/// a workspace directory would be, symlinks) are never touched, however old.
fn orphans(backend: Backend) {
    let cfg = config(
        r#"
[orphans]
local_min_age = "1h"
"#,
    );
    let Some(d) = Daemon::start(backend, &cfg) else {
        return;
    };
    let live = d.submit(&["--timeout", "1h"], &["sleep", "60"]);
    d.wait_job(&live, "running", |j| j.stage == Stage::Running);
    let wsdir = d.data.join("workspaces");
    let orphan = "01aaaaaaaaaaaaaaaaaaaaaaaa";
    let young = "01bbbbbbbbbbbbbbbbbbbbbbbb";
    // What an administrator or a tool leaves next to the workspaces: never a job's.
    let not_jobs = [
        "not an id!",
        ".cache",
        "not-a-job",
        ".01aaaaaaaaaaaaaaaaaaaaaaaa",
    ];
    for name in [orphan, young].into_iter().chain(not_jobs) {
        std::fs::create_dir_all(wsdir.join(name)).expect("mkdir");
        std::fs::write(wsdir.join(name).join("file"), "x").expect("write");
    }
    // Named like a job id, but a plain file and a symlink to a directory elsewhere.
    let file_named_like_a_job = wsdir.join("01cccccccccccccccccccccccc");
    std::fs::write(&file_named_like_a_job, "x").expect("write");
    let elsewhere = d.root.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("precious"), "x").expect("write");
    let link = wsdir.join("01dddddddddddddddddddddddd");
    std::os::unix::fs::symlink(&elsewhere, &link).expect("symlink");
    let orphan_log = d.log(orphan);
    std::fs::write(&orphan_log, "old log\n").expect("write log");
    let not_job_log = d.data.join("logs").join("not-a-job.log");
    std::fs::write(&not_job_log, "someone else's log\n").expect("write log");
    for p in [
        wsdir.join(orphan),
        d.ws(&live),
        orphan_log.clone(),
        not_job_log.clone(),
        file_named_like_a_job.clone(),
        elsewhere.clone(),
    ]
    .into_iter()
    .chain(not_jobs.iter().map(|n| wsdir.join(n)))
    {
        age(&p);
    }
    age_link(&link);

    let report: jobwarden::api_types::OrphanReport =
        serde_json::from_str(&d.ok(&["orphans", "--json"])).expect("orphans --json");
    assert!(report.skipped.is_empty(), "{report:#?}");
    let mut found: Vec<(String, String)> = report
        .orphans
        .iter()
        .map(|o| (o.kind.clone(), o.job_id.clone()))
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("log".to_owned(), orphan.to_owned()),
            ("workspace".to_owned(), orphan.to_owned())
        ],
        "{report:#?}"
    );
    assert!(
        report.orphans.iter().all(|o| o.age_seconds >= 7000),
        "{report:#?}"
    );

    let cleaned: jobwarden::api_types::OrphanReport =
        serde_json::from_str(&d.ok(&["orphans", "--clean", "--json"]))
            .expect("orphans --clean --json");
    assert_eq!(cleaned.queued, 2, "{cleaned:#?}");
    wait_until("the orphans to be removed", || {
        !wsdir.join(orphan).exists() && !orphan_log.exists()
    });
    let audit = d.wait_audit(orphan, "two orphan_cleanup rows", |_| true);
    let audit_rows = rows(&audit, AuditAction::OrphanCleanup);
    assert!(
        audit_rows.iter().all(|r| r.success && !r.dry_run),
        "{audit:#?}"
    );
    d.wait_audit(orphan, "both orphan_cleanup rows", |r| {
        r.resource_type == "log"
    });
    d.wait_audit(orphan, "both orphan_cleanup rows", |r| {
        r.resource_type == "workspace"
    });

    assert!(
        wsdir.join(young).join("file").exists(),
        "a young entry was removed"
    );
    for name in not_jobs {
        assert!(
            wsdir.join(name).join("file").exists(),
            "{name:?} is not a job's workspace and was removed"
        );
    }
    assert!(
        file_named_like_a_job.is_file(),
        "a file named like a job id was removed"
    );
    assert!(
        std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()),
        "a symlink named like a job id was removed"
    );
    assert!(
        elsewhere.join("precious").exists(),
        "the symlink's target was removed"
    );
    assert!(
        not_job_log.exists(),
        "a log that is not a job's was removed"
    );
    assert!(
        rows(&d.audit_all(), AuditAction::OrphanCleanup)
            .iter()
            .all(|r| r.job_id == orphan),
        "an orphan_cleanup row for something that is not the orphan"
    );
    assert!(d.ws(&live).exists(), "a live job's workspace was removed");
    assert_eq!(d.get(&live).stage, Stage::Running);
    // Nothing left to report.
    let again: jobwarden::api_types::OrphanReport =
        serde_json::from_str(&d.ok(&["orphans", "--json"])).expect("orphans --json");
    assert!(again.orphans.is_empty(), "{again:#?}");
}

/// `run --dry-run`: every decision audited with dry_run=true, nothing signalled or removed.
fn dry_run(backend: Backend) {
    let cfg = config(
        r#"
[orphans]
local_min_age = "0s"
"#,
    );
    let Some(d) = Daemon::start_with(backend, &cfg, &["--dry-run"]) else {
        return;
    };
    let overdue = d.submit_sh(
        &["--timeout", "1s", "--grace", "1s"],
        &format!("echo work > data.txt; {SAVES_WORK}"),
    );
    let finished = d.submit_sh(&["--ttl", "1s"], "echo kept > out.txt");
    let orphan = "01cccccccccccccccccccccccc";
    let orphan_ws = d.data.join("workspaces").join(orphan);
    std::fs::create_dir_all(&orphan_ws).expect("mkdir");

    // The whole ladder is decided (force_delete at D + 2G = 3 s) …
    let j = d.wait_step(&overdue, Step::ForceDelete);
    let audit = d.audit(&overdue);
    for action in [
        AuditAction::Warn,
        AuditAction::SoftKill,
        AuditAction::HardKill,
        AuditAction::ForceDelete,
    ] {
        let r = rows(&audit, action);
        assert_eq!(r.len(), 1, "{action}: {audit:#?}");
        assert!(r[0].dry_run, "{action} row not marked dry-run: {:#?}", r[0]);
    }
    // … and nothing is carried out.
    let pid = j.pid.expect("pid");
    assert!(alive(pid), "dry-run killed the job");
    assert_eq!(j.outcome, None, "{j:#?}");
    assert_ne!(j.stage, Stage::Terminating, "{j:#?}");
    assert!(
        d.ws(&overdue).join("data.txt").exists(),
        "dry-run removed the workspace"
    );
    assert!(
        !d.ws(&overdue).join("term_at").exists(),
        "dry-run sent SIGTERM"
    );

    // TTL: decided and audited, the workspace stays.
    d.wait_audit(&finished, "a dry-run ttl_cleanup row", |r| {
        r.action == AuditAction::TtlCleanup
    });
    std::thread::sleep(std::time::Duration::from_millis(800)); // give the queue its chance
    let audit = d.audit(&finished);
    let ttl = rows(&audit, AuditAction::TtlCleanup);
    assert!(
        !ttl.is_empty() && ttl.iter().all(|r| r.dry_run),
        "{audit:#?}"
    );
    assert!(
        d.ws(&finished).join("out.txt").exists(),
        "dry-run removed a workspace"
    );
    assert!(d.log(&finished).exists(), "dry-run removed a log");

    // Orphans: reported, "cleaned" in dry-run, still there.
    d.ok(&["orphans", "--clean"]);
    d.wait_audit(orphan, "a dry-run orphan_cleanup row", |r| {
        r.action == AuditAction::OrphanCleanup
    });
    let audit = d.audit(orphan);
    assert!(audit.iter().all(|r| r.dry_run), "{audit:#?}");
    assert!(orphan_ws.exists(), "dry-run removed an orphan");

    // Still alive at the end, and every row of the log is dry-run.
    assert!(alive(pid));
    let all = d.audit_all();
    assert!(
        all.iter()
            .filter(|r| r.action != AuditAction::Hook)
            .all(|r| r.dry_run),
        "{all:#?}"
    );
}

/// Artifacts in the file:// store follow their per-kind retention from the finish, through the
/// queue, audited with object counts; object orphans are removed by `orphans --clean` and a
/// live job's prefixes and unrecognised keys are never touched.
fn artifact_retention_and_object_orphans(backend: Backend) {
    let cfg = config(
        r#"
[retention.artifacts]
partial = "1s"
logs = "1h"
[orphans]
artifact_min_age = "0s"
"#,
    );
    let Some(d) = Daemon::start(backend, &cfg) else {
        return;
    };
    let id = d.submit(&["--ttl", "1h", "--org", "acme"], &["sleep", "1"]);
    let root = d.data.join("artifacts");
    let put = |rel: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, b"data").expect("write");
        p
    };
    let partial = put(&format!("partial/{id}/artifacts.tar.gz"));
    let finals = put(&format!("jobs/acme/{id}/out.txt"));
    let logs = put(&format!("logs/{id}/run.log"));
    let orphan_id = "01hxzzzzzzzzzzzzzzzzzzzzzz";
    let orphan = put(&format!("partial/{orphan_id}/artifacts.tar.gz"));
    let odd = put("partial/not-an-id!/x");
    // Valid names, but not ids jobwarden generates: another system's, never this daemon's.
    let foreign = [put("partial/not-a-job/x"), put("logs/example-0001/run.log")];
    let dot = put("logs/.cache/x");
    d.wait_finished(&id);

    let rows = d.wait_audit(&id, "partial prefix deleted", |r| {
        r.action == AuditAction::TtlCleanup && r.resource_name.contains("/partial/")
    });
    let row = rows
        .iter()
        .find(|r| r.resource_name.contains("/partial/"))
        .expect("row");
    assert!(
        row.success && row.reason.contains("deleted 1 objects"),
        "{row:#?}"
    );
    assert_eq!(
        row.details
            .as_ref()
            .and_then(|d| d.get("objects"))
            .and_then(|v| v.as_u64()),
        Some(1)
    );
    assert!(
        !partial.exists(),
        "partial artifacts outlived their 1s retention"
    );
    assert!(
        finals.exists() && logs.exists(),
        "artifacts with a 1h retention were deleted"
    );

    let out = d.ok(&["orphans", "--json"]);
    assert!(out.contains(orphan_id), "{out}");
    assert!(
        !out.contains("not-a-job") && !out.contains("example-0001") && !out.contains(".cache"),
        "a name jobwarden did not generate reported as orphan: {out}"
    );
    assert!(
        !out.contains(&format!("\"{id}\"")),
        "a live job's prefix reported as orphan: {out}"
    );
    d.ok(&["orphans", "--clean"]);
    d.wait_audit(orphan_id, "orphan prefix deleted", |r| {
        r.action == AuditAction::OrphanCleanup && r.success
    });
    assert!(!orphan.exists(), "the orphan prefix is still there");
    assert!(odd.exists(), "a key that is not a job prefix was deleted");
    assert!(dot.exists(), "a dot-file key was deleted");
    for f in &foreign {
        assert!(f.exists(), "{} was deleted", f.display());
    }
    assert!(
        finals.exists() && logs.exists(),
        "a known job's artifacts were deleted as orphans"
    );
}

both_stores!(
    ttl_cleanup,
    orphans,
    dry_run,
    artifact_retention_and_object_orphans
);
