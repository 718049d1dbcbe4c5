//! Running jobwarden-init and looking at processes, with bounded waits only.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

pub const BIN: &str = env!("CARGO_BIN_EXE_jobwarden-init");

/// The longest any test waits for something that should happen within a second or two.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A `jobwarden-init` command with a clean `FLOWFORGE_*` environment and a hermetic git
/// (no global or system config, so the fallback commit identity is what a bare container has).
pub fn init_command(job_id: &str) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("FLOWFORGE_") || key.starts_with("AWS_") || key.starts_with("GIT_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    if !job_id.is_empty() {
        cmd.env("FLOWFORGE_JOB_ID", job_id);
    }
    cmd
}

/// A running jobwarden-init; SIGKILLed on drop if a test fails half-way.
pub struct Running {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

/// How a jobwarden-init run ended.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The JSON summary: the last line of stdout.
    pub fn summary(&self) -> serde_json::Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "no JSON summary on stdout ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// The summary's step named `name`.
    pub fn step(&self, name: &str) -> serde_json::Value {
        let summary = self.summary();
        let steps = summary["steps"].as_array().cloned().unwrap_or_default();
        steps
            .into_iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no {name} step in {summary}\nstderr:\n{}", self.stderr))
    }
}

impl Running {
    /// Starts `cmd`, capturing stdout and stderr into files in `dir`.
    pub fn start(mut cmd: Command, dir: &Path) -> Running {
        let out = dir.join("init.stdout");
        let err = dir.join("init.stderr");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("create stdout file"))
            .stderr(fs::File::create(&err).expect("create stderr file"))
            .spawn()
            .expect("start jobwarden-init");
        Running {
            child: Some(child),
            out,
            err,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(self.pid()).expect("valid pid");
        rustix::process::kill_process(pid, sig).expect("signal jobwarden-init");
    }

    pub fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().expect("child present");
        child.try_wait().expect("try_wait").is_none()
    }

    pub fn stderr_so_far(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits (bounded by `within`) for jobwarden-init to exit.
    pub fn wait(mut self, within: Duration) -> Finished {
        let mut child = self.child.take().expect("child present");
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "jobwarden-init still running after {within:?}; stderr:\n{}",
                    fs::read_to_string(&self.err).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        use std::os::unix::process::ExitStatusExt;
        Finished {
            code: status.code().or(status.signal().map(|s| 128 + s)),
            stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a file a child writes to signal it is ready.
pub fn wait_for_file(path: &Path) {
    wait_for(&format!("{}", path.display()), PATIENCE, || path.exists());
}

/// `(state, ppid)` of a process from /proc, or `None` once it is gone (reaped).
pub fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True while `pid` runs (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z')
}

pub fn read_pid(path: &Path) -> i32 {
    wait_for(&format!("a pid in {}", path.display()), PATIENCE, || {
        fs::read_to_string(path).is_ok_and(|s| s.trim().parse::<i32>().is_ok())
    });
    fs::read_to_string(path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid")
}

/// Runs git with a fixed identity and no global config; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Like `git`, but returns `None` on failure.
pub fn git_try(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("run git");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A work tree `work` with one pushed commit and a bare `remote.git` as its origin.
pub struct Repo {
    pub work: PathBuf,
    pub remote: PathBuf,
    pub head: String,
}

pub fn repo_with_remote(dir: &Path) -> Repo {
    let remote = dir.join("remote.git");
    let work = dir.join("work");
    git(
        dir,
        &["init", "--quiet", "--bare", "-b", "main", "remote.git"],
    );
    git(dir, &["init", "--quiet", "-b", "main", "work"]);
    fs::write(work.join("a.txt"), "original\n").expect("write");
    fs::write(work.join("gone.txt"), "to be deleted\n").expect("write");
    fs::write(work.join(".gitignore"), "ignored.txt\n").expect("write");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "initial"]);
    git(
        &work,
        &[
            "remote",
            "add",
            "origin",
            remote.to_str().expect("utf-8 path"),
        ],
    );
    git(&work, &["push", "--quiet", "origin", "main"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    Repo { work, remote, head }
}

/// The shell snippet every save test's child runs: exit 0 on SIGTERM, say when ready.
pub fn trap_term_then_exit(ready: &Path, code: i32) -> String {
    format!(
        "trap 'exit {code}' TERM; : > '{}'; while :; do sleep 0.05; done",
        ready.display()
    )
}
