//! The WIP save on SIGTERM, against a real work tree and a bare remote on disk.

use std::fs;

use rustix::process::Signal;

use crate::harness::*;

#[test]
fn sigterm_pushes_uncommitted_work_to_the_wip_branch_without_touching_the_repo() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = repo_with_remote(tmp.path());
    fs::write(repo.work.join("a.txt"), "changed\n").expect("write");
    fs::write(repo.work.join("b.txt"), "new\n").expect("write");
    fs::create_dir_all(repo.work.join("dir/deeper")).expect("mkdir");
    fs::write(repo.work.join("dir/deeper/c.txt"), "nested\n").expect("write");
    fs::write(repo.work.join("ignored.txt"), "secret\n").expect("write");
    fs::remove_file(repo.work.join("gone.txt")).expect("rm");
    let status_before = git(&repo.work, &["status", "--porcelain"]);

    let ready = tmp.path().join("ready");
    let mut cmd = init_command("wip-1");
    cmd.args(["--grace", "5", "--repo"]).arg(&repo.work).args([
        "--",
        "sh",
        "-c",
        &trap_term_then_exit(&ready, 0),
    ]);
    let init = Running::start(cmd, tmp.path());
    wait_for_file(&ready);
    init.signal(Signal::TERM);
    let done = init.wait(PATIENCE);
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);

    let wip = "refs/heads/flowforge-wip-wip-1";
    let remote = &repo.remote;
    let show = |path: &str| git_try(remote, &["show", &format!("{wip}:{path}")]);
    assert_eq!(show("a.txt").as_deref(), Some("changed"));
    assert_eq!(show("b.txt").as_deref(), Some("new"));
    assert_eq!(show("dir/deeper/c.txt").as_deref(), Some("nested"));
    assert_eq!(
        show("ignored.txt"),
        None,
        "ignored files must not be committed"
    );
    assert_eq!(
        show("gone.txt"),
        None,
        "deleted files must be deleted in the WIP commit"
    );
    let commit = git(remote, &["log", "-1", "--format=%s%n%an <%ae>%n%P", wip]);
    assert_eq!(
        commit,
        format!(
            "WIP: job wip-1 terminated - saving progress\n\
             jobwarden-init <jobwarden-init@localhost>\n{}",
            repo.head
        )
    );

    // The job's repository is exactly as it was: same HEAD, same changes, no leftovers.
    assert_eq!(git(&repo.work, &["rev-parse", "HEAD"]), repo.head);
    assert_eq!(git(&repo.work, &["status", "--porcelain"]), status_before);
    let leftovers: Vec<_> = fs::read_dir(repo.work.join(".git"))
        .expect("git dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("jobwarden") || n.ends_with(".lock"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new());

    let step = done.step("git");
    assert_eq!(step["ok"], true, "{step}");
    assert_eq!(step["outcome"], "saved");
    assert_eq!(step["trigger"], "sigterm");
    assert!(step["millis"].as_u64().is_some());
    assert!(
        done.stderr.contains(
            "jobwarden-init: git: committed 4 files, pushed refs/heads/flowforge-wip-wip-1"
        ),
        "{}",
        done.stderr
    );
}

#[test]
fn a_clean_repo_pushes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = repo_with_remote(tmp.path());
    let ready = tmp.path().join("ready");
    let mut cmd = init_command("clean-1");
    cmd.args(["--grace", "5", "--repo"]).arg(&repo.work).args([
        "--",
        "sh",
        "-c",
        &trap_term_then_exit(&ready, 0),
    ]);
    let init = Running::start(cmd, tmp.path());
    wait_for_file(&ready);
    init.signal(Signal::TERM);
    let done = init.wait(PATIENCE);

    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    let refs = git(&repo.remote, &["for-each-ref", "--format=%(refname)"]);
    assert_eq!(refs, "refs/heads/main");
    let step = done.step("git");
    assert_eq!(step["ok"], true);
    assert_eq!(step["outcome"], "skipped");
    assert!(
        step["detail"]
            .as_str()
            .is_some_and(|d| d.contains("nothing pushed")),
        "{step}"
    );
}

#[test]
fn a_failed_push_is_reported_and_the_childs_status_still_wins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = repo_with_remote(tmp.path());
    git(
        &repo.work,
        &["remote", "set-url", "origin", "/nonexistent/remote.git"],
    );
    fs::write(repo.work.join("b.txt"), "new\n").expect("write");
    let ready = tmp.path().join("ready");
    let mut cmd = init_command("push-fail");
    cmd.args(["--grace", "5", "--repo"]).arg(&repo.work).args([
        "--",
        "sh",
        "-c",
        &trap_term_then_exit(&ready, 3),
    ]);
    let init = Running::start(cmd, tmp.path());
    wait_for_file(&ready);
    init.signal(Signal::TERM);
    let done = init.wait(PATIENCE);

    assert_eq!(done.code, Some(3), "stderr:\n{}", done.stderr);
    let step = done.step("git");
    assert_eq!(step["ok"], false);
    assert_eq!(step["outcome"], "failed");
    let detail = step["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("git push to origin failed"), "{detail}");
    assert!(
        detail.contains("/nonexistent/remote.git"),
        "git's reason is kept: {detail}"
    );
    assert_eq!(git(&repo.work, &["rev-parse", "HEAD"]), repo.head);
}

#[test]
fn a_directory_that_is_not_a_work_tree_is_skipped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let plain = tmp.path().join("plain");
    fs::create_dir(&plain).expect("mkdir");
    fs::write(plain.join("f"), "x").expect("write");
    let ready = tmp.path().join("ready");
    let mut cmd = init_command("no-git");
    cmd.env("GIT_CEILING_DIRECTORIES", tmp.path())
        .args(["--grace", "5", "--repo"])
        .arg(&plain)
        .args(["--", "sh", "-c", &trap_term_then_exit(&ready, 0)]);
    let init = Running::start(cmd, tmp.path());
    wait_for_file(&ready);
    init.signal(Signal::TERM);
    let done = init.wait(PATIENCE);
    assert_eq!(done.code, Some(0));
    let step = done.step("git");
    assert_eq!(step["outcome"], "skipped", "{step}");
    assert!(
        step["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not a git work tree")),
        "{step}"
    );
}

#[test]
fn a_hung_push_is_killed_when_the_save_budget_runs_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = repo_with_remote(tmp.path());
    // The remote's pre-receive hook never finishes: the push hangs.
    let hook = repo.remote.join("hooks/pre-receive");
    let hook_pid = tmp.path().join("hook-pid");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho $$ > '{}'\nexec sleep 60\n",
            hook_pid.display()
        ),
    )
    .expect("write hook");
    fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    fs::write(repo.work.join("b.txt"), "new\n").expect("write");

    let ready = tmp.path().join("ready");
    let mut cmd = init_command("hung-push");
    cmd.args(["--grace", "2", "--repo"]).arg(&repo.work).args([
        "--",
        "sh",
        "-c",
        &trap_term_then_exit(&ready, 0),
    ]);
    let init = Running::start(cmd, tmp.path());
    wait_for_file(&ready);
    let sent = std::time::Instant::now();
    init.signal(Signal::TERM);
    let done = init.wait(PATIENCE);
    let took = sent.elapsed();

    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    // Budget: 2 s grace minus a 0.2 s margin.
    assert!(
        took < std::time::Duration::from_millis(3500),
        "took {took:?}"
    );
    let step = done.step("git");
    assert_eq!(step["outcome"], "timed_out", "{step}");
    assert_eq!(step["ok"], false);
    assert_eq!(
        step["detail"],
        "stopped while running git push: the save budget ran out"
    );
    // The hook ran inside git's process group and went down with it.
    let hook = read_pid(&hook_pid);
    wait_for("the hung hook to be killed", PATIENCE, || !alive(hook));
}
