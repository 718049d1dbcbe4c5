//! The checkpoint before the deadline: save, then SIGUSR1, while the job keeps running.

use std::fs;
use std::time::Instant;

use crate::harness::*;

#[test]
fn checkpoint_saves_before_the_deadline_then_signals_the_child() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = repo_with_remote(tmp.path());
    fs::write(repo.work.join("b.txt"), "half-done\n").expect("write");
    let artifacts = tmp.path().join("artifacts");
    fs::create_dir(&artifacts).expect("mkdir");
    fs::write(artifacts.join("out.txt"), "partial\n").expect("write");
    let store = tmp.path().join("store");

    // On SIGUSR1 the child records what the remote holds at that moment (proving the save
    // came first), then finishes normally. Its helper `sleep 30` has no SIGUSR1 handler.
    let seen = tmp.path().join("seen-at-usr1");
    let helper_pid = tmp.path().join("helper");
    let wip = "refs/heads/flowforge-wip-cp-1";
    let script = format!(
        "sleep 30 & echo $! > \"{helper}\"; \
         trap 'git --git-dir=\"{remote}\" rev-parse --verify -q {wip} > \"{seen}\"; \
               test -f \"{object}\" && echo archive >> \"{seen}\"; exit 0' USR1; \
         while :; do sleep 0.05; done",
        helper = helper_pid.display(),
        remote = repo.remote.display(),
        seen = seen.display(),
        object = store.join("partial/cp-1/artifacts.tar.gz").display(),
    );
    let mut cmd = init_command("cp-1");
    cmd.env("FLOWFORGE_TIMEOUT", "3s")
        .env("FLOWFORGE_CHECKPOINT_BEFORE", "2s")
        .env("FLOWFORGE_GRACE_PERIOD", "5s")
        .env("FLOWFORGE_REPO", &repo.work)
        .env("FLOWFORGE_ARTIFACTS_DIR", &artifacts)
        .env(
            "FLOWFORGE_ARTIFACTS_URL",
            format!("file://{}", store.display()),
        )
        .args(["--", "sh", "-c", &script]);
    let started = Instant::now();
    let done = Running::start(cmd, tmp.path()).wait(PATIENCE);
    let took = started.elapsed();

    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    // SIGUSR1 went to the command only: its helper survived it (and, by design, the command's
    // exit too: jobwarden-init does not kill what is left of the group).
    let helper = read_pid(&helper_pid);
    let helper_alive = alive(helper);
    if let Some(helper) = rustix::process::Pid::from_raw(helper) {
        let _ = rustix::process::kill_process(helper, rustix::process::Signal::KILL);
    }
    assert!(
        helper_alive,
        "the checkpoint's SIGUSR1 killed a helper of the command"
    );
    // Checkpoint due at 3 s - 2 s = 1 s after start.
    assert!(took.as_millis() >= 900, "checkpoint too early: {took:?}");
    let seen = fs::read_to_string(&seen).expect("the child got SIGUSR1");
    let wip_commit = git(&repo.remote, &["rev-parse", wip]);
    assert_eq!(
        seen,
        format!("{wip_commit}\narchive\n"),
        "SIGUSR1 came before the save ended"
    );
    assert_eq!(
        git(&repo.remote, &["log", "-1", "--format=%s", wip]),
        "WIP: job cp-1 checkpoint before deadline - saving progress"
    );
    assert_eq!(
        git(&repo.remote, &["show", &format!("{wip}:b.txt")]),
        "half-done"
    );
    assert_eq!(
        git(&repo.work, &["rev-parse", "HEAD"]),
        repo.head,
        "HEAD must not move"
    );

    let summary = done.summary();
    assert_eq!(summary["terminated_by_sigterm"], false);
    for step in ["git", "artifacts"] {
        let step = done.step(step);
        assert_eq!(step["trigger"], "checkpoint", "{step}");
        assert_eq!(step["outcome"], "saved", "{step}");
    }
    assert!(
        done.stderr
            .contains("jobwarden-init: checkpoint: git: committed 1 file,"),
        "{}",
        done.stderr
    );
}

#[test]
fn a_deadline_already_past_checkpoints_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let artifacts = tmp.path().join("artifacts");
    fs::create_dir(&artifacts).expect("mkdir");
    fs::write(artifacts.join("out.txt"), "partial\n").expect("write");
    let store = tmp.path().join("store");
    let mut cmd = init_command("cp-past");
    cmd.env("FLOWFORGE_DEADLINE", "2000-01-01T00:00:00Z")
        .env("FLOWFORGE_TIMEOUT", "1h") // the explicit deadline wins
        .args(["--checkpoint-before", "10m", "--artifacts-dir"])
        .arg(&artifacts)
        .arg("--artifacts-url")
        .arg(format!("file://{}", store.display()))
        .args([
            "--",
            "sh",
            "-c",
            "trap 'exit 5' USR1; while :; do sleep 0.05; done",
        ]);
    let done = Running::start(cmd, tmp.path()).wait(PATIENCE);
    // SIGUSR1 goes out at once: the child's trap exits 5, or, on a loaded machine where the
    // signal beats the shell to its `trap`, SIGUSR1's default action ends it (128 + 10).
    // Either way the child got the checkpoint signal.
    assert!(
        matches!(done.code, Some(5) | Some(138)),
        "code {:?}, stderr:\n{}",
        done.code,
        done.stderr
    );
    assert!(store.join("partial/cp-past/artifacts.tar.gz").exists());
    assert_eq!(done.step("artifacts")["trigger"], "checkpoint");
}

#[test]
fn checkpoint_without_a_deadline_warns_and_never_fires() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = init_command("cp-none");
    cmd.args(["--checkpoint-before", "1s", "--", "sh", "-c", "sleep 0.3"]);
    let done = Running::start(cmd, tmp.path()).wait(PATIENCE);
    assert_eq!(done.code, Some(0));
    assert!(
        done.stderr.contains("no checkpoint will run"),
        "{}",
        done.stderr
    );
}
