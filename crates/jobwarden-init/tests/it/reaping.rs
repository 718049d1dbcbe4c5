//! Zombie reaping: orphaned grandchildren are adopted (child subreaper) and reaped.

use std::fs;

use rustix::process::Signal;

use crate::harness::*;

#[test]
fn orphaned_grandchildren_are_adopted_and_reaped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().display();
    // The inner shell starts two background sleeps and exits at once, orphaning them.
    let script = format!(
        "sh -c 'sleep 1 & echo $! > {dir}/p1; sleep 1.2 & echo $! > {dir}/p2'; \
         : > {dir}/ready; trap 'exit 0' TERM; while :; do sleep 0.05; done"
    );
    let mut cmd = init_command("reap-1");
    cmd.args(["--", "sh", "-c", &script]);
    let init = Running::start(cmd, tmp.path());
    wait_for_file(&tmp.path().join("ready"));

    let orphans = [
        read_pid(&tmp.path().join("p1")),
        read_pid(&tmp.path().join("p2")),
    ];
    for pid in orphans {
        let stat = proc_stat(pid);
        assert!(
            matches!(stat, Some((_, ppid)) if ppid == init.pid()),
            "orphan {pid} should have been adopted by jobwarden-init {}: {stat:?}",
            init.pid()
        );
    }
    // Once they exit they must disappear: a zombie stays in /proc until its parent reaps it.
    for pid in orphans {
        wait_for(&format!("orphan {pid} to be reaped"), PATIENCE, || {
            proc_stat(pid).is_none()
        });
    }
    assert!(fs::read_dir("/proc").is_ok());

    init.signal(Signal::TERM);
    let done = init.wait(PATIENCE);
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
}
