//! Command line and environment: the clap definition, and turning what it read into a checked
//! [`Config`] before the child starts.
//!
//! Every option can also come from the `FLOWFORGE_*` variable the runtime sets; a flag wins
//! over its variable. Error messages name where a bad value came from (the flag or the
//! variable), quote it, and say what is accepted. An empty path or URL variable counts as
//! unset; an empty duration or job id is an error.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::parser::ValueSource;
use clap::{ArgMatches, Parser};
use url::Url;

use crate::duration;
use crate::error::{Error, Result};
use crate::job_id::JobId;
use crate::save::artifacts::{Artifacts, Target};
use crate::timing;

/// jobwarden-init: runs CMD as the job's supervisor — forwards signals, saves work in progress
/// on SIGTERM, sends heartbeats, reaps zombies, and exits with CMD's status.
///
/// Durations are whole seconds (300) or numbers with units w, d, h, m, s (90s, 1h30m, 7d).
#[derive(Debug, Parser)]
#[command(name = "jobwarden-init", version)]
pub struct Args {
    /// The job's id (1-128 of A-Z a-z 0-9 . _ -); names the WIP branch and the artifacts key
    #[arg(long, env = "FLOWFORGE_JOB_ID", value_name = "ID")]
    pub job_id: Option<String>,

    /// Time between SIGTERM and the runtime's SIGKILL [default: 30s]
    #[arg(long, env = "FLOWFORGE_GRACE_PERIOD", value_name = "DUR")]
    pub grace: Option<String>,

    /// The job's deadline, RFC 3339 (wins over --timeout)
    #[arg(long, env = "FLOWFORGE_DEADLINE", value_name = "TIME")]
    pub deadline: Option<String>,

    /// The job's timeout, counted from now: the deadline when --deadline is not set
    #[arg(long, env = "FLOWFORGE_TIMEOUT", value_name = "DUR")]
    pub timeout: Option<String>,

    /// Git work tree whose uncommitted changes are pushed to flowforge-wip-<id> on origin
    #[arg(long, env = "FLOWFORGE_REPO", value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// Directory whose files are uploaded as partial/<id>/artifacts.tar.gz
    #[arg(long, env = "FLOWFORGE_ARTIFACTS_DIR", value_name = "DIR")]
    pub artifacts_dir: Option<PathBuf>,

    /// Where partial artifacts go: file:///dir or s3://bucket/prefix
    #[arg(long, env = "FLOWFORGE_ARTIFACTS_URL", value_name = "URL")]
    pub artifacts_url: Option<String>,

    /// URL to POST a heartbeat to while CMD runs
    #[arg(long, env = "FLOWFORGE_HEARTBEAT_URL", value_name = "URL")]
    pub heartbeat_url: Option<String>,

    /// Heartbeat interval [default: 30s]
    #[arg(long, env = "FLOWFORGE_HEARTBEAT_EVERY", value_name = "DUR")]
    pub heartbeat_every: Option<String>,

    /// Save work and send SIGUSR1 to CMD this long before the deadline
    #[arg(long, env = "FLOWFORGE_CHECKPOINT_BEFORE", value_name = "DUR")]
    pub checkpoint_before: Option<String>,

    /// The command to run, and its arguments (put them after `--`)
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Heartbeat settings.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub url: Url,
    pub every: Duration,
}

/// Everything the supervisor needs, checked.
#[derive(Debug)]
pub struct Config {
    pub job_id: JobId,
    pub grace: Duration,
    pub deadline: Option<DateTime<Utc>>,
    pub checkpoint_before: Option<Duration>,
    pub repo: Option<PathBuf>,
    pub artifacts: Option<Artifacts>,
    pub heartbeat: Option<Heartbeat>,
    pub command: Vec<OsString>,
    /// Things worth saying that do not stop the job.
    pub warnings: Vec<String>,
}

impl Config {
    /// Checks what clap read. `now` is the start time (the deadline may be relative to it).
    pub fn from_matches(args: Args, matches: &ArgMatches, now: DateTime<Utc>) -> Result<Config> {
        // Where a value came from, for error messages: the flag or the variable.
        let key = |id: &str, flag: &str, env: &str| -> String {
            match matches.value_source(id) {
                Some(ValueSource::EnvVariable) => env.to_owned(),
                _ => flag.to_owned(),
            }
        };
        let dur =
            |value: &Option<String>, id: &str, flag: &str, env: &str| -> Result<Option<Duration>> {
                value
                    .as_deref()
                    .map(|v| {
                        duration::parse(v).map_err(|source| Error::InvalidDuration {
                            key: key(id, flag, env),
                            value: v.to_owned(),
                            source,
                        })
                    })
                    .transpose()
            };
        let mut warnings = Vec::new();

        let Some(job_id) = args.job_id.as_deref() else {
            return Err(Error::Missing {
                key: "the job id (FLOWFORGE_JOB_ID or --job-id)".into(),
                hint: "the runtime sets FLOWFORGE_JOB_ID; pass --job-id when running by hand",
            });
        };
        let job_id = JobId::parse(job_id).map_err(|reason| Error::InvalidJobId {
            key: key("job_id", "--job-id", "FLOWFORGE_JOB_ID"),
            value: job_id.to_owned(),
            reason,
        })?;

        let grace = dur(&args.grace, "grace", "--grace", "FLOWFORGE_GRACE_PERIOD")?
            .unwrap_or(timing::DEFAULT_GRACE);
        let timeout = dur(&args.timeout, "timeout", "--timeout", "FLOWFORGE_TIMEOUT")?;
        let checkpoint_before = dur(
            &args.checkpoint_before,
            "checkpoint_before",
            "--checkpoint-before",
            "FLOWFORGE_CHECKPOINT_BEFORE",
        )?;
        let heartbeat_every = dur(
            &args.heartbeat_every,
            "heartbeat_every",
            "--heartbeat-every",
            "FLOWFORGE_HEARTBEAT_EVERY",
        )?;
        if heartbeat_every == Some(Duration::ZERO) {
            return Err(Error::InvalidValue {
                key: key(
                    "heartbeat_every",
                    "--heartbeat-every",
                    "FLOWFORGE_HEARTBEAT_EVERY",
                ),
                value: args.heartbeat_every.clone().unwrap_or_default(),
                reason: "the heartbeat interval must be at least 1s".into(),
            });
        }

        let deadline = args
            .deadline
            .as_deref()
            .map(|v| {
                DateTime::parse_from_rfc3339(v.trim())
                    .map(|d| d.with_timezone(&Utc))
                    .map_err(|e| Error::InvalidValue {
                        key: key("deadline", "--deadline", "FLOWFORGE_DEADLINE"),
                        value: v.to_owned(),
                        reason: format!("not an RFC 3339 time such as 2030-01-31T12:00:00Z ({e})"),
                    })
            })
            .transpose()?;
        let deadline = timing::resolve_deadline(deadline, timeout, now);
        if checkpoint_before.is_some() && deadline.is_none() {
            warnings.push(
                "--checkpoint-before is set but there is no deadline (FLOWFORGE_DEADLINE or \
                 FLOWFORGE_TIMEOUT), so no checkpoint will run"
                    .into(),
            );
        }

        let artifacts_url = non_empty(args.artifacts_url);
        let artifacts_dir = args.artifacts_dir.filter(|d| !d.as_os_str().is_empty());
        let artifacts = match (artifacts_dir, artifacts_url) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(Error::Missing {
                    key: "--artifacts-url (FLOWFORGE_ARTIFACTS_URL)".into(),
                    hint: "--artifacts-dir is set, so its archive needs a destination \
                           (file:///dir or s3://bucket/prefix)",
                });
            }
            (Some(dir), Some(url)) => {
                let bad = |reason| Error::InvalidValue {
                    key: key(
                        "artifacts_url",
                        "--artifacts-url",
                        "FLOWFORGE_ARTIFACTS_URL",
                    ),
                    value: url.clone(),
                    reason,
                };
                let target = Target::parse(&url).map_err(bad)?;
                target.validate().map_err(bad)?;
                Some(Artifacts { dir, target })
            }
        };

        let heartbeat = match non_empty(args.heartbeat_url) {
            None => None,
            Some(url) => {
                let bad = |reason: String| Error::InvalidValue {
                    key: key(
                        "heartbeat_url",
                        "--heartbeat-url",
                        "FLOWFORGE_HEARTBEAT_URL",
                    ),
                    value: url.clone(),
                    reason,
                };
                let parsed = Url::parse(&url).map_err(|e| bad(format!("not a URL ({e})")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(bad("a heartbeat URL must be http:// or https://".into()));
                }
                Some(Heartbeat {
                    url: parsed,
                    every: heartbeat_every.unwrap_or(timing::DEFAULT_HEARTBEAT_EVERY),
                })
            }
        };

        if args.command.is_empty() {
            return Err(Error::MissingCommand);
        }

        Ok(Config {
            job_id,
            grace,
            deadline,
            checkpoint_before,
            repo: args.repo.filter(|r| !r.as_os_str().is_empty()),
            artifacts,
            heartbeat,
            command: args.command,
            warnings,
        })
    }

    /// Checks the directories before the child starts. A repository or artifacts directory
    /// that does not exist yet is fine (the job may create it; it is looked at again when
    /// saving); one that exists but cannot be used is an error.
    pub fn check_paths(&mut self) -> Result<()> {
        if let Some(repo) = &self.repo {
            match std::fs::metadata(repo) {
                Ok(meta) if !meta.is_dir() => {
                    return Err(Error::Repo {
                        path: repo.clone(),
                        reason: "not a directory".into(),
                    });
                }
                Ok(_) => {
                    std::fs::read_dir(repo).map_err(|e| Error::Repo {
                        path: repo.clone(),
                        reason: format!("cannot read it: {e}"),
                    })?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.warnings.push(format!(
                    "--repo {} does not exist yet; it is looked at again when saving",
                    repo.display()
                )),
                Err(e) => {
                    return Err(Error::Repo {
                        path: repo.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        if let Some(artifacts) = &self.artifacts
            && let Ok(meta) = std::fs::metadata(&artifacts.dir)
            && !meta.is_dir()
        {
            return Err(Error::ArtifactsDir {
                path: artifacts.dir.clone(),
                reason: "not a directory".into(),
            });
        }
        Ok(())
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2030-01-01T10:00:00Z")
            .expect("valid test time")
            .with_timezone(&Utc)
    }

    /// Parses flags only: flags win over `FLOWFORGE_*`, and every option a test looks at is
    /// given as a flag, so the environment of the test run cannot change the outcome.
    fn config(argv: &[&str]) -> Result<Config> {
        let matches = Args::command()
            .try_get_matches_from(std::iter::once("jobwarden-init").chain(argv.iter().copied()))
            .expect("clap accepts the arguments");
        let args = Args::from_arg_matches(&matches).expect("matches fit Args");
        Config::from_matches(args, &matches, now())
    }

    #[test]
    fn reads_flags_with_defaults() {
        let c = config(&["--job-id", "j1", "--grace", "10", "--", "sleep", "5"]).expect("valid");
        assert_eq!(c.job_id.as_str(), "j1");
        assert_eq!(c.grace, Duration::from_secs(10));
        assert_eq!(c.command, ["sleep", "5"]);
        assert!(c.heartbeat.is_none() && c.artifacts.is_none() && c.deadline.is_none());
    }

    #[test]
    fn command_may_follow_without_double_dash_and_keeps_its_flags() {
        let c = config(&["--job-id", "j1", "--grace", "1", "sh", "-c", "exit 3"]).expect("valid");
        assert_eq!(c.command, ["sh", "-c", "exit 3"]);
    }

    #[test]
    fn deadline_wins_over_timeout_and_timeout_counts_from_now() {
        let c = config(&[
            "--job-id",
            "j",
            "--timeout",
            "1h",
            "--deadline",
            "2030-01-01T10:05:00Z",
            "x",
        ])
        .expect("valid");
        assert_eq!(
            c.deadline.map(|d| d.to_rfc3339()),
            Some("2030-01-01T10:05:00+00:00".into())
        );
        let c = config(&["--job-id", "j", "--timeout", "1h", "--deadline", "", "x"]);
        assert!(matches!(c, Err(Error::InvalidValue { .. })), "{c:?}");
        let c = config(&["--job-id", "j", "--timeout", "90m", "x"]).expect("valid");
        assert_eq!(
            c.deadline.map(|d| d.to_rfc3339()),
            Some("2030-01-01T11:30:00+00:00".into())
        );
    }

    #[test]
    fn bad_values_name_the_flag_and_quote_the_value() {
        let err = config(&["--job-id", "j", "--grace", "1.5s", "x"]).expect_err("fraction");
        let msg = err.to_string();
        assert!(msg.contains("\"1.5s\"") && msg.contains("--grace"), "{msg}");
        assert_eq!(err.exit_code(), 2);

        let err = config(&["--job-id", "../x", "x"]).expect_err("bad id");
        assert!(err.to_string().contains("\"../x\""), "{err}");

        let err =
            config(&["--job-id", "j", "--heartbeat-url", "ftp://h/x", "x"]).expect_err("scheme");
        assert!(err.to_string().contains("http"), "{err}");

        let err = config(&[
            "--job-id",
            "j",
            "--heartbeat-url",
            "http://h/",
            "--heartbeat-every",
            "0",
            "x",
        ])
        .expect_err("zero interval");
        assert!(err.to_string().contains("--heartbeat-every"), "{err}");

        let err = config(&[
            "--job-id",
            "j",
            "--artifacts-dir",
            "/tmp",
            "--artifacts-url",
            "http://x",
            "x",
        ])
        .expect_err("scheme");
        assert!(err.to_string().contains("--artifacts-url"), "{err}");
    }

    #[test]
    fn artifacts_dir_needs_a_destination() {
        let err = config(&[
            "--job-id",
            "j",
            "--artifacts-dir",
            "/tmp/a",
            "--artifacts-url",
            "",
            "x",
        ])
        .expect_err("no url");
        assert!(matches!(err, Error::Missing { .. }), "{err:?}");
    }

    #[test]
    fn missing_command_is_an_error() {
        let err = config(&["--job-id", "j"]).expect_err("no command");
        assert!(matches!(err, Error::MissingCommand));
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn checkpoint_with_a_deadline_needs_no_warning() {
        let c = config(&[
            "--job-id",
            "j",
            "--checkpoint-before",
            "5m",
            "--deadline",
            "2030-01-01T11:00:00Z",
            "x",
        ])
        .expect("valid");
        assert!(c.warnings.is_empty());
        assert_eq!(c.checkpoint_before, Some(Duration::from_secs(300)));
    }
}
