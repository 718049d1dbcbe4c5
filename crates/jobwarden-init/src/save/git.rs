//! Saves uncommitted work in the job's git work tree to `refs/heads/flowforge-wip-<id>` on
//! `origin`, driving the real `git` CLI.
//!
//! The WIP commit is built with plumbing on a private copy of the index (`GIT_INDEX_FILE`):
//! `add -A`, `write-tree`, `commit-tree -p HEAD`, then `push origin +<commit>:<wip ref>`.
//! The job's HEAD, branch, index and working tree are never changed and its `index.lock` is
//! never taken, which matters for the checkpoint, after which the job keeps running and may be
//! using git itself. The pushed commit is the same as `git add -A && git commit` would make:
//! parent HEAD, every change including untracked (not ignored) files.
//!
//! Every `git` runs in its own process group and is SIGKILLed with it when the step is dropped
//! (budget used up or cancelled), so a hung `push` (and its ssh) cannot outlive the step.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::process::{Pid, Signal};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use super::{Done, Progress, count};
use crate::child::{ExitStatus, Reaper};
use crate::error::{Error, Result};
use crate::job_id::JobId;
use crate::supervise::machine::Trigger;

/// The identity used when the repository has none configured.
const FALLBACK_NAME: &str = "jobwarden-init";
const FALLBACK_EMAIL: &str = "jobwarden-init@localhost";

/// Numbers the private index files.
static SAVES: AtomicU32 = AtomicU32::new(0);

/// The commit message of the WIP commit.
pub fn commit_message(id: &JobId, trigger: Trigger) -> String {
    match trigger {
        Trigger::Sigterm => format!("WIP: job {id} terminated - saving progress"),
        Trigger::Checkpoint => {
            format!("WIP: job {id} checkpoint before deadline - saving progress")
        }
    }
}

/// Counts the entries of `git status --porcelain=v1 -z`: one per changed path (a rename's
/// second, original path is not counted).
pub fn count_changes(porcelain_z: &[u8]) -> usize {
    let mut entries = porcelain_z.split(|b| *b == 0).filter(|e| !e.is_empty());
    let mut count = 0;
    while let Some(entry) = entries.next() {
        count += 1;
        if matches!(entry.first(), Some(b'R' | b'C')) {
            entries.next(); // the rename/copy source
        }
    }
    count
}

pub async fn save(
    reaper: &Arc<Reaper>,
    repo: &Path,
    id: &JobId,
    trigger: Trigger,
    progress: Progress,
) -> Result<Done> {
    progress.set("checking the repository");
    let repo = match tokio::fs::canonicalize(repo).await {
        Ok(repo) => repo,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Done::skipped(format!("{} does not exist", repo.display())));
        }
        Err(err) => return Err(Error::Git(format!("{}: {err}", repo.display()))),
    };
    let git = Git {
        reaper: reaper.clone(),
        repo: repo.clone(),
        index: None,
    };
    let inside = git.run(&["rev-parse", "--is-inside-work-tree"]).await?;
    if !inside.ok() || inside.stdout_trimmed() != "true" {
        return Ok(Done::skipped(format!(
            "{} is not a git work tree",
            repo.display()
        )));
    }
    let wip_ref = id.wip_ref().map_err(Error::Git)?;

    progress.set("running git status");
    let status = git
        .run(&[
            "--no-optional-locks",
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
        ])
        .await?
        .check("git status")?;
    let files = count_changes(&status.stdout);
    if files == 0 {
        return Ok(Done::skipped("no changes, nothing pushed"));
    }

    progress.set("staging changes");
    let paths = git
        .run(&[
            "rev-parse",
            "--git-path",
            "index",
            "--git-path",
            // Unique per save: a git killed in a cancelled save cannot leave a lock in the way.
            &format!(
                "jobwarden-init-wip-{}-{}.index",
                std::process::id(),
                SAVES.fetch_add(1, Ordering::Relaxed)
            ),
        ])
        .await?
        .check("git rev-parse --git-path")?;
    let paths = paths.stdout_str();
    let mut lines = paths.lines();
    let (Some(index), Some(private)) = (lines.next(), lines.next()) else {
        return Err(Error::Git(
            "git rev-parse --git-path printed no paths".into(),
        ));
    };
    let private = TempIndex(repo.join(private));
    match tokio::fs::copy(repo.join(index), &private.0).await {
        Ok(_) => {}
        // A repository where nothing was ever staged has no index yet: start from empty.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(Error::Git(format!(
                "copying the index to {}: {err}",
                private.0.display()
            )));
        }
    }
    let staging = Git {
        index: Some(private.0.clone()),
        ..git.clone()
    };
    staging.run(&["add", "-A"]).await?.check("git add -A")?;
    let tree = staging
        .run(&["write-tree"])
        .await?
        .check("git write-tree")?;
    let tree = tree.stdout_trimmed().to_owned();

    let head = git
        .run(&["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])
        .await?;
    let parent = head.ok().then(|| head.stdout_trimmed().to_owned());
    if let Some(parent) = &parent {
        let parent_tree = git
            .run(&["rev-parse", &format!("{parent}^{{tree}}")])
            .await?
            .check("git rev-parse")?;
        if parent_tree.stdout_trimmed() == tree {
            return Ok(Done::skipped(
                "only changes git does not commit (e.g. in submodules), nothing pushed",
            ));
        }
    }

    progress.set("committing");
    let configured = git
        .run(&["config", "--get-regexp", r"^user\.(name|email)$"])
        .await?;
    let configured = configured.stdout_str();
    let mut commit_args: Vec<String> = Vec::new();
    if !configured.lines().any(|l| l.starts_with("user.name ")) {
        commit_args.extend(["-c".into(), format!("user.name={FALLBACK_NAME}")]);
    }
    if !configured.lines().any(|l| l.starts_with("user.email ")) {
        commit_args.extend(["-c".into(), format!("user.email={FALLBACK_EMAIL}")]);
    }
    commit_args.extend(["commit-tree".into(), "--no-gpg-sign".into(), tree]);
    if let Some(parent) = parent {
        commit_args.extend(["-p".into(), parent]);
    }
    commit_args.extend(["-m".into(), commit_message(id, trigger)]);
    let commit = git.run(&commit_args).await?.check("git commit-tree")?;
    let commit = commit.stdout_trimmed().to_owned();
    let short = commit.get(..12).unwrap_or(&commit);
    drop(private);

    progress.set("running git push");
    let push = git
        .run(&[
            "push",
            "--no-verify",
            "--quiet",
            "origin",
            &format!("+{commit}:{wip_ref}"),
        ])
        .await?;
    if !push.ok() {
        return Err(Error::Git(format!(
            "committed {} as {short}, but git push to origin failed ({}): {}",
            count(files as u64, "file"),
            push.status_text(),
            push.stderr_summary()
        )));
    }
    Ok(Done::saved(format!(
        "committed {}, pushed {wip_ref} as {short}",
        count(files as u64, "file")
    )))
}

/// Runs `git -C <repo>` with an optional private index.
#[derive(Debug, Clone)]
struct Git {
    reaper: Arc<Reaper>,
    repo: PathBuf,
    index: Option<PathBuf>,
}

impl Git {
    async fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(&self.repo)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Never wait for a password prompt in a dying container.
            .env("GIT_TERMINAL_PROMPT", "0");
        if let Some(index) = &self.index {
            cmd.env("GIT_INDEX_FILE", index);
        }
        let started = self.reaper.spawn(&mut cmd).map_err(|err| {
            Error::Git(match err.kind() {
                std::io::ErrorKind::NotFound => "git is not installed (not found on PATH)".into(),
                _ => format!("cannot run git: {err}"),
            })
        })?;
        // From here on, dropping this future kills git and everything it started.
        let _kill = KillOnDrop {
            reaper: self.reaper.clone(),
            pid: started.pid,
        };
        let mut child = started.child;
        let stdout = read_all(child.stdout.take());
        let stderr = read_all(child.stderr.take());
        let (stdout, stderr, status) = tokio::join!(stdout, stderr, started.exit);
        let status = status.map_err(|_| Error::Git("git's exit status was lost".into()))?;
        Ok(Output {
            status,
            stdout: stdout.map_err(|e| Error::Git(format!("reading git's output: {e}")))?,
            stderr: stderr.map_err(|e| Error::Git(format!("reading git's errors: {e}")))?,
        })
    }
}

async fn read_all(pipe: Option<impl Into<std::os::fd::OwnedFd>>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(pipe) = pipe {
        pipe::Receiver::from_owned_fd(pipe.into())?
            .read_to_end(&mut buf)
            .await?;
    }
    Ok(buf)
}

#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Output {
    fn ok(&self) -> bool {
        self.status == ExitStatus::Code(0)
    }

    fn check(self, what: &str) -> Result<Output> {
        if self.ok() {
            return Ok(self);
        }
        Err(Error::Git(format!(
            "{what} failed ({}): {}",
            self.status_text(),
            self.stderr_summary()
        )))
    }

    fn stdout_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }

    fn stdout_trimmed(&self) -> &str {
        std::str::from_utf8(&self.stdout).unwrap_or("").trim()
    }

    fn status_text(&self) -> String {
        match self.status {
            ExitStatus::Code(code) => format!("exit status {code}"),
            ExitStatus::Signal(sig) => format!("killed by signal {sig}"),
        }
    }

    /// The first lines git wrote to stderr (git states the cause first, then advice).
    fn stderr_summary(&self) -> String {
        summarize_stderr(&self.stderr)
    }
}

/// Up to three non-empty lines of `stderr`, at most 400 characters, on one line.
fn summarize_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .collect();
    let summary = lines.join(" / ");
    if summary.is_empty() {
        return "no error output".into();
    }
    match summary.char_indices().nth(400) {
        Some((cut, _)) => format!("{}...", &summary[..cut]),
        None => summary,
    }
}

/// SIGKILLs a git's process group unless it has already been reaped.
struct KillOnDrop {
    reaper: Arc<Reaper>,
    pid: Pid,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.reaper.signal_group(self.pid, Signal::KILL);
    }
}

/// The private index file, removed when the step is done with it (or dropped).
struct TempIndex(PathBuf);

impl Drop for TempIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(self.0.with_extension("index.lock"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_porcelain_entries_and_skips_rename_sources() {
        assert_eq!(count_changes(b""), 0);
        assert_eq!(count_changes(b" M a.txt\0?? b.txt\0"), 2);
        assert_eq!(count_changes(b"R  new.txt\0old.txt\0 M c\0"), 2);
        assert_eq!(count_changes(b"?? dir/with space\0"), 1);
    }

    #[test]
    fn stderr_summary_keeps_the_cause_and_stays_short() {
        let push = b"fatal: 'x' does not appear to be a git repository\n\
                     fatal: Could not read from remote repository.\n\n\
                     Please make sure you have the correct access rights\n\
                     and the repository exists.\n";
        assert_eq!(
            summarize_stderr(push),
            "fatal: 'x' does not appear to be a git repository / fatal: Could not read from \
             remote repository. / Please make sure you have the correct access rights"
        );
        assert_eq!(summarize_stderr(b"\n  \n"), "no error output");
        let long = "é".repeat(1000);
        assert_eq!(summarize_stderr(long.as_bytes()).chars().count(), 403);
    }

    #[test]
    fn commit_message_names_the_job_and_why() {
        let id = JobId::parse("j-1").expect("valid id");
        assert_eq!(
            commit_message(&id, Trigger::Sigterm),
            "WIP: job j-1 terminated - saving progress"
        );
        assert_eq!(
            commit_message(&id, Trigger::Checkpoint),
            "WIP: job j-1 checkpoint before deadline - saving progress"
        );
    }
}
