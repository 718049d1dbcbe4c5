//! Signal forwarding, exit statuses, the parent-death signal and the grace-period kill.

use std::fs;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::harness::*;

#[test]
fn sigterm_reaches_a_trapping_child_and_its_exit_code_propagates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ready, got) = (tmp.path().join("ready"), tmp.path().join("got"));
    let script = format!(
        "trap 'echo TERM > \"{}\"; exit 42' TERM; : > '{}'; while :; do sleep 0.05; done",
        got.display(),
        ready.display()
    );
    let mut cmd = init_command("sig-1");
    cmd.args(["--grace", "5", "--", "sh", "-c", &script]);
    let init = Running::start(cmd, tmp.path());
    wait_for_file(&ready);

    init.signal(Signal::TERM);
    let done = init.wait(PATIENCE);

    assert_eq!(done.code, Some(42), "stderr:\n{}", done.stderr);
    assert_eq!(fs::read_to_string(&got).expect("trap ran"), "TERM\n");
    let summary = done.summary();
    assert_eq!(summary["exit_code"], 42);
    assert_eq!(summary["signal"], serde_json::Value::Null);
    assert_eq!(summary["terminated_by_sigterm"], true);
    assert_eq!(summary["job_id"], "sig-1");
    assert!(
        done.stderr.contains("SIGTERM: forwarded"),
        "{}",
        done.stderr
    );
}

#[test]
fn every_forwarded_signal_reaches_the_child() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ready, log) = (tmp.path().join("ready"), tmp.path().join("log"));
    let log_s = log.display();
    let mut script = String::new();
    for sig in ["INT", "HUP", "QUIT", "USR1", "USR2"] {
        script += &format!("trap 'echo {sig} >> \"{log_s}\"' {sig}; ");
    }
    script += &format!(
        "trap 'echo TERM >> \"{log_s}\"; exit 0' TERM; : > '{}'; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut cmd = init_command("sig-all");
    cmd.args(["--grace", "5", "--", "sh", "-c", &script]);
    let mut init = Running::start(cmd, tmp.path());
    wait_for_file(&ready);

    let mut expected = String::new();
    for (sig, name) in [
        (Signal::INT, "INT"),
        (Signal::HUP, "HUP"),
        (Signal::QUIT, "QUIT"),
        (Signal::USR1, "USR1"),
        (Signal::USR2, "USR2"),
    ] {
        init.signal(sig);
        expected += &format!("{name}\n");
        wait_for(&format!("{name} to reach the child"), PATIENCE, || {
            fs::read_to_string(&log).unwrap_or_default() == expected
        });
        assert!(init.is_running(), "{name} ended jobwarden-init");
    }
    init.signal(Signal::TERM);
    let done = init.wait(PATIENCE);
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    assert_eq!(fs::read_to_string(&log).expect("log"), expected + "TERM\n");
}

#[test]
fn a_child_ignoring_sigterm_runs_until_the_caller_sigkills_init_then_dies_with_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pid_file = tmp.path().join("pid");
    // `exec` keeps the pid; the ignored disposition survives exec.
    let script = format!(
        "trap '' TERM; echo $$ > '{}'; exec sleep 60",
        pid_file.display()
    );
    let mut cmd = init_command("sig-ignore");
    cmd.args(["--grace", "30", "--", "sh", "-c", &script]);
    let mut init = Running::start(cmd, tmp.path());
    let child = read_pid(&pid_file);
    wait_for("the child to exec sleep", PATIENCE, || {
        fs::read_to_string(format!("/proc/{child}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });

    init.signal(Signal::TERM);
    wait_for("jobwarden-init to log the SIGTERM", PATIENCE, || {
        init.stderr_so_far().contains("SIGTERM: forwarded")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(child),
        "the child should ignore SIGTERM and keep running"
    );
    assert!(
        init.is_running(),
        "jobwarden-init must wait for the child during the grace period"
    );

    init.signal(Signal::KILL);
    let done = init.wait(PATIENCE);
    assert_eq!(done.code, Some(137));
    // The parent-death signal ends the child with jobwarden-init.
    wait_for("the child to die with jobwarden-init", PATIENCE, || {
        !alive(child)
    });
}

#[test]
fn a_child_still_running_when_the_grace_period_ends_is_killed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pid_file = tmp.path().join("pid");
    let script = format!(
        "trap '' TERM; echo $$ > '{}'; exec sleep 60",
        pid_file.display()
    );
    let mut cmd = init_command("sig-grace");
    cmd.args(["--grace", "1", "--", "sh", "-c", &script]);
    let init = Running::start(cmd, tmp.path());
    let child = read_pid(&pid_file);
    wait_for("the child to exec sleep", PATIENCE, || {
        fs::read_to_string(format!("/proc/{child}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });

    let sent = Instant::now();
    init.signal(Signal::TERM);
    let done = init.wait(PATIENCE);
    let took = sent.elapsed();

    assert_eq!(done.code, Some(137), "stderr:\n{}", done.stderr);
    let summary = done.summary();
    assert_eq!(summary["signal"], 9);
    assert_eq!(summary["terminated_by_sigterm"], true);
    // Grace 1 s minus the 0.1 s safety margin.
    assert!(
        took >= Duration::from_millis(850),
        "killed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "killed too late: {took:?}");
    assert!(!alive(child), "the child survived the grace period");
    assert!(
        done.stderr.contains("grace period is used up"),
        "{}",
        done.stderr
    );
}

#[test]
fn exit_codes_and_signals_propagate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (script, code, signal) in [
        ("exit 0", 0, serde_json::Value::Null),
        ("exit 3", 3, serde_json::Value::Null),
        ("exit 255", 255, serde_json::Value::Null),
        ("kill -KILL $$", 137, 9.into()),
        ("kill -USR2 $$", 128 + 12, 12.into()),
    ] {
        let mut cmd = init_command("codes");
        cmd.args(["--", "sh", "-c", script]);
        let done = Running::start(cmd, tmp.path()).wait(PATIENCE);
        assert_eq!(done.code, Some(code), "{script}: stderr:\n{}", done.stderr);
        let summary = done.summary();
        assert_eq!(summary["exit_code"], code, "{script}");
        assert_eq!(summary["signal"], signal, "{script}");
        assert_eq!(summary["terminated_by_sigterm"], false, "{script}");
        assert_eq!(summary["steps"], serde_json::json!([]), "{script}");
    }
}

#[test]
fn a_command_that_does_not_exist_exits_127() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = init_command("nope");
    cmd.args(["--", "/nonexistent/jobwarden-test-command"]);
    let done = Running::start(cmd, tmp.path()).wait(PATIENCE);
    assert_eq!(done.code, Some(127));
    assert!(
        done.stderr
            .contains("cannot start \"/nonexistent/jobwarden-test-command\""),
        "{}",
        done.stderr
    );
}
