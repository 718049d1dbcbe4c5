//! The data directory runs out of space, two ways:
//!
//! - a file-size limit (`RLIMIT_FSIZE`, the daemon run under `prlimit --fsize`): the SQLite
//!   write-ahead log reaches the limit. The kernel answers SIGXFSZ, whose default action would
//!   kill the daemon in the middle of a write; the daemon catches it, so the write fails with
//!   EFBIG and is reported;
//! - a full file system (a 4 MiB tmpfs mounted on the data dir; needs the privilege to mount,
//!   skipped loudly without it): writes fail with ENOSPC.
//!
//! Either way: the daemon keeps running; a submit that cannot be recorded is refused with a 503
//! whose message names the problem and the path; `/readyz` says not-ready with the same
//! diagnosis and the log says it too; no acknowledged job is lost; the SQLite file passes
//! `PRAGMA integrity_check` afterwards; and once the condition is gone (space freed, or a
//! restart without the limit) everything works again.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Submits `true` jobs until one is refused; returns the acknowledged ids and the refusal.
fn fill(d: &Daemon, max: usize) -> (Vec<String>, (u16, String)) {
    let mut acked = Vec::new();
    for i in 0..max {
        let (status, body) = d.post_job(&serde_json::json!({
            "command": ["true"],
            "name": format!("fill-{i}"),
        }));
        if status != 201 {
            return (acked, (status, body));
        }
        let j: jobwarden::api_types::JobView = serde_json::from_str(&body).expect("job");
        acked.push(j.id);
    }
    panic!("{max} jobs were accepted: the store never ran out of space");
}

/// The refusal, `/readyz` and the log all say what is wrong and where.
fn assert_clear_error(d: &mut Daemon, refusal: &(u16, String), problem: &str, path: &str) {
    let (status, body) = refusal;
    assert_eq!(*status, 503, "a refused submit: {body}");
    assert!(
        body.contains(problem) && body.contains(path),
        "the refusal should name the problem ({problem:?}) and the path ({path}): {body}"
    );
    assert!(d.exited().is_none(), "the daemon died: {}", d.last_log());
    let (status, body) = d.readyz();
    assert_eq!(status, 503, "ready although the store cannot write: {body}");
    assert!(
        body.contains("store cannot write") && body.contains(problem) && body.contains(path),
        "/readyz: {body}"
    );
    let log = d.last_log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(problem) && l.contains(path)),
        "no log line names the problem and the path:\n{log}"
    );
}

/// Stops the daemon and checks the SQLite file.
fn stop_and_check_integrity(d: &mut Daemon) {
    d.stop();
    let check = sqlite(&d.sqlite_path(), "PRAGMA integrity_check");
    assert_eq!(check.trim(), "ok", "integrity_check after the fault");
}

/// Every acknowledged job is still there and settled (it ran `true`): the problems, if any.
fn lost_or_stuck(d: &Daemon, acked: &[String]) -> Vec<String> {
    let jobs = d.list();
    let mut problems = Vec::new();
    for id in acked {
        match jobs.iter().find(|j| &j.id == id) {
            None => problems.push(format!("acknowledged job {id} is lost")),
            // Watched again (its pid recorded) or settled: either is fine.
            Some(j) if j.outcome.is_none() && j.pid.is_none() => problems.push(format!(
                "acknowledged job {id} is stuck in {} with pid {:?} after the restart: its start \
                 was never recorded, so its process is not watched (its timeout would not be \
                 enforced)",
                j.stage, j.pid
            )),
            Some(_) => {}
        }
    }
    problems
}

#[test]
fn file_size_limit() {
    let limit: u64 = 1 << 20;
    let opts = SpawnOpts {
        wrapper: vec![
            "prlimit".into(),
            format!("--fsize={limit}:{limit}"),
            "--".into(),
        ],
        ..SpawnOpts::default()
    };
    let mut d = Daemon::start_opts(Backend::Sqlite, &config(""), &[], opts).expect("sqlite");
    let (acked, refusal) = fill(&d, 3000);
    assert!(acked.len() > 3, "refused too early: {refusal:?}");
    let db = d.sqlite_path().display().to_string();
    assert_clear_error(&mut d, &refusal, "file size limit", &db);
    assert!(refusal.1.contains(&limit.to_string()), "{}", refusal.1);

    stop_and_check_integrity(&mut d);
    d.opts.wrapper.clear();
    d.restart();
    d.wait_loaded();
    // Every acknowledged job is there, watched (pid recorded) or settled: a job whose start
    // could not be recorded was refused, not acknowledged.
    let problems = lost_or_stuck(&d, &acked);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let (status, body) = d.readyz();
    assert_eq!(status, 200, "{body}");
    let id = d.submit(&[], &["true"]);
    d.wait_finished(&id);
}

/// Mounts a tmpfs; unmounts (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(at.to_owned()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn file_system_full() {
    let mut d =
        Daemon::create(Backend::Sqlite, &config(""), &[], SpawnOpts::default()).expect("sqlite");
    let tmpfs = match Tmpfs::mount(&d.data, "4m") {
        Ok(t) => t,
        Err(e) => {
            let msg = format!(
                "cannot mount a tmpfs on the data dir ({e}); the file-size-limit variant still \
                 runs"
            );
            assert!(
                std::env::var("JOBWARDEN_REQUIRE_TMPFS").is_err(),
                "JOBWARDEN_REQUIRE_TMPFS is set: {msg}"
            );
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("\n!!! SKIPPED fault_disk::file_system_full: {msg}\n").as_bytes(),
            );
            return;
        }
    };
    d.try_spawn().unwrap_or_else(|e| panic!("{e}"));
    let first = d.submit(&[], &["true"]);
    d.wait_finished(&first);
    // Leave ~300 KiB free.
    let st = rustix::fs::statvfs(&d.data).expect("statvfs");
    let free = st.f_bavail * st.f_frsize;
    let filler = d.data.join("filler");
    std::fs::write(
        &filler,
        vec![0u8; usize::try_from(free - 300 * 1024).expect("size")],
    )
    .expect("fill the tmpfs");
    let (mut acked, refusal) = fill(&d, 3000);
    acked.push(first);
    let dir = d.data.display().to_string();
    assert_clear_error(&mut d, &refusal, "disk full", &dir);

    // Space comes back: ready again without a restart, and new work is accepted and
    // recorded. (Checked to the end even when this part fails, so that a failure also says
    // whether anything acknowledged was lost.)
    std::fs::remove_file(&filler).expect("rm filler");
    let mut recovery = Vec::new();
    let mut ready = d.readyz();
    for _ in 0..50 {
        if ready.0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        ready = d.readyz();
    }
    if ready.0 != 200 {
        recovery.push(format!(
            "still not ready 5 s after space was freed: {} {}; largest files:\n{}",
            ready.0,
            ready.1,
            largest_files(&d.data)
        ));
    }
    let (status, body) = d.post_job(&serde_json::json!({ "command": ["true"] }));
    if status == 201 {
        let id = serde_json::from_str::<jobwarden::api_types::JobView>(&body)
            .expect("job")
            .id;
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let j = d.get(&id);
            if j.outcome.is_some() {
                break;
            }
            if std::time::Instant::now() > deadline {
                recovery.push(format!(
                    "a job submitted after space was freed is stuck in {} (its start and exit \
                     were never recorded); the daemon's last errors:\n{}",
                    j.stage,
                    last_errors(&d)
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        acked.push(id);
    } else {
        recovery.push(format!(
            "a submit after space was freed was refused: {status} {body}; the daemon's last \
             errors:\n{}",
            last_errors(&d)
        ));
    }
    stop_and_check_integrity(&mut d);
    d.restart();
    d.wait_loaded();
    recovery.extend(lost_or_stuck(&d, &acked));
    d.stop();
    drop(tmpfs);
    assert!(
        recovery.is_empty(),
        "the daemon did not recover when space came back:\n{}",
        recovery.join("\n")
    );
}

/// The last few ERROR/WARN lines of the daemon's current log.
fn last_errors(d: &Daemon) -> String {
    let log = d.last_log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    lines[lines.len().saturating_sub(4)..].join("\n")
}

/// `du -ab DIR | sort -n | tail -5`, for failure messages.
fn largest_files(dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "du -ab '{0}' | sort -n | tail -6; df -B1 '{0}'; ls -l /proc/*/fd 2>/dev/null | grep -F '{0}' | head",
            dir.display()
        ))
        .output()
        .expect("du");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
