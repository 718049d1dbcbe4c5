//! The daemon under test: a running `jobwarden` child with the probes it started, stopped on
//! drop ([`DaemonRun`]); waiting until it listens ([`wait_listening`]); plain HTTP GETs
//! against it ([`get_text`], [`get_json`]); and the temporary directory guard ([`DirGuard`]).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// Removes a directory tree on drop unless asked to keep it.
pub(crate) struct DirGuard {
    pub(crate) path: PathBuf,
    pub(crate) keep: bool,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("jobwarden-bench: kept {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("jobwarden-bench: removing {}: {e}", self.path.display());
        }
    }
}

/// A running daemon with the probes it started; stopped (and its probes killed) on drop.
pub(crate) struct DaemonRun {
    pub(crate) child: Option<Child>,
    pub(crate) probes: Vec<i32>,
    pub(crate) token: String,
}

impl DaemonRun {
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Kills probes still running (only processes whose command line carries our token), then
    /// stops the daemon (SIGTERM, SIGKILL after 5 s). Returns how many probes were killed.
    pub(crate) fn stop(&mut self) -> usize {
        let mut killed = 0;
        for &pid in &self.probes {
            if is_our_probe(pid, &self.token)
                && let Some(p) = rustix::process::Pid::from_raw(pid)
                && rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok()
            {
                killed += 1;
            }
        }
        if let Some(mut child) = self.child.take() {
            if killed > 0 {
                // Let the daemon reap them before it goes.
                std::thread::sleep(Duration::from_millis(500));
            }
            if let Some(p) = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            }
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        killed
    }
}

impl Drop for DaemonRun {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn is_our_probe(pid: i32, token: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) => {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.contains(&b"probe".as_slice()) && args.contains(&token.as_bytes())
        }
        Err(_) => false,
    }
}

/// Waits for the daemon's "listening on" line, then `/healthz`; returns the base URL.
pub(crate) async fn wait_listening(
    daemon: &mut DaemonRun,
    log: &Path,
    http: &reqwest::Client,
) -> Result<String, String> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(child) = daemon.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(format!("the daemon exited ({status}):\n{}", tail(log, 20)));
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("jobwarden listening on ").nth(1)
            && let Some(url) = rest.split_whitespace().next()
        {
            let url = url.to_owned();
            if get_text(http, &format!("{url}/healthz")).await.is_ok() {
                return Ok(url);
            }
        }
        if Instant::now() >= until {
            return Err(format!(
                "the daemon did not come up in 30 s:\n{}",
                tail(log, 20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) async fn get_text(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}: {}", text.trim()));
    }
    Ok(text)
}

pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, String> {
    let text = get_text(http, url).await?;
    serde_json::from_str(&text).map_err(|e| format!("GET {url}: {e}"))
}
