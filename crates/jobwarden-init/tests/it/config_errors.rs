//! Configuration errors end jobwarden-init with status 2 before the command starts.

use std::fs;
use std::path::Path;

use crate::harness::*;

/// Runs jobwarden-init around `touch <marker>`, which must never run.
fn run_rejected(mut cmd: std::process::Command, dir: &Path) -> Finished {
    let marker = dir.join("started");
    cmd.args(["touch", marker.to_str().expect("utf-8 path")]);
    let done = Running::start(cmd, dir).wait(PATIENCE);
    assert!(
        !marker.exists(),
        "the command ran; stderr:\n{}",
        done.stderr
    );
    assert_eq!(done.code, Some(2), "stderr:\n{}", done.stderr);
    assert!(
        done.stdout.is_empty(),
        "no summary for a job that never started"
    );
    done
}

#[test]
fn a_bad_job_id_is_rejected_before_the_command_starts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let long = "x".repeat(129);
    for id in [
        "../etc",
        "a/b",
        ".",
        "..",
        "has space",
        "semi;colon",
        long.as_str(),
    ] {
        let mut cmd = init_command(id);
        cmd.arg("--");
        let done = run_rejected(cmd, tmp.path());
        assert!(
            done.stderr.contains("invalid job id") && done.stderr.contains("FLOWFORGE_JOB_ID"),
            "{id:?}: {}",
            done.stderr
        );
        assert!(
            done.stderr.contains(&format!("{id:?}")),
            "{id:?}: {}",
            done.stderr
        );
    }
    // From the flag, the message names the flag.
    let mut cmd = init_command("");
    cmd.args(["--job-id", "", "--"]);
    let done = run_rejected(cmd, tmp.path());
    assert!(
        done.stderr.contains("--job-id") && done.stderr.contains("empty"),
        "{}",
        done.stderr
    );
}

#[test]
fn a_missing_job_id_is_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = init_command("");
    cmd.arg("--");
    let done = run_rejected(cmd, tmp.path());
    assert!(done.stderr.contains("FLOWFORGE_JOB_ID"), "{}", done.stderr);
}

#[test]
fn a_missing_command_is_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = init_command("no-cmd");
    cmd.args(["--grace", "1"]);
    let done = Running::start(cmd, tmp.path()).wait(PATIENCE);
    assert_eq!(done.code, Some(2));
    assert!(done.stderr.contains("no command given"), "{}", done.stderr);
}

#[test]
fn an_unusable_repo_is_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("not-a-dir");
    fs::write(&file, "x").expect("write");
    for repo in [file.clone(), file.join("below-a-file")] {
        let mut cmd = init_command("bad-repo");
        cmd.arg("--repo").arg(&repo).arg("--");
        let done = run_rejected(cmd, tmp.path());
        assert!(
            done.stderr.contains(&format!("--repo {}", repo.display())),
            "{}",
            done.stderr
        );
    }
}

#[test]
fn bad_values_from_the_environment_name_the_variable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (var, value, expect) in [
        ("FLOWFORGE_GRACE_PERIOD", "1.5s", "fractions"),
        ("FLOWFORGE_GRACE_PERIOD", "", "empty"),
        ("FLOWFORGE_TIMEOUT", "10x", "unknown unit"),
        ("FLOWFORGE_TIMEOUT", "-5", "negative"),
        ("FLOWFORGE_DEADLINE", "tomorrow", "RFC 3339"),
        ("FLOWFORGE_HEARTBEAT_URL", "not a url", "not a URL"),
        (
            "FLOWFORGE_CHECKPOINT_BEFORE",
            "99999999999999999999w",
            "too large",
        ),
    ] {
        let mut cmd = init_command("env-err");
        cmd.env(var, value).arg("--");
        let done = run_rejected(cmd, tmp.path());
        assert!(
            done.stderr.contains(var) && done.stderr.contains(&format!("{value:?}")),
            "{var}={value:?}: {}",
            done.stderr
        );
        assert!(
            done.stderr.contains(expect),
            "{var}={value:?}: {}",
            done.stderr
        );
    }
}

#[test]
fn flags_override_the_environment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = init_command("from-env");
    cmd.env("FLOWFORGE_GRACE_PERIOD", "not-a-duration").args([
        "--grace",
        "2s",
        "--job-id",
        "from-flag",
        "--",
        "true",
    ]);
    let done = Running::start(cmd, tmp.path()).wait(PATIENCE);
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    assert_eq!(done.summary()["job_id"], "from-flag");
}

/// The duration grammar is jobwarden's (one parser for both binaries): the same inputs are
/// refused with the same problem, and a repeated or out-of-order unit is refused.
#[test]
fn durations_follow_the_shared_grammar() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for value in ["1h1h", "30m1h", "1h 30m", "+5", "10ms", "1.5h"] {
        let mut cmd = init_command("grammar");
        cmd.args(["--timeout", value, "--"]);
        let done = run_rejected(cmd, tmp.path());
        let problem = jobwarden_duration::parse(value)
            .expect_err(value)
            .to_string();
        assert!(
            done.stderr.contains("--timeout")
                && done.stderr.contains(&format!("{value:?}"))
                && done.stderr.contains(&problem)
                && done.stderr.contains(jobwarden_duration::GRAMMAR),
            "{value:?}: want {problem:?}: {}",
            done.stderr
        );
    }
}
