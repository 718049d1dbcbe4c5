//! The TOML configuration: one file, every key with a default, validated as a whole.
//!
//! `Config::default()` is the embedded configuration `jobwarden run` uses without a file.
//! [`Config::load`] reads and validates a file; every error names the file, the key and the
//! problem (`jobwarden config check` prints it and exits 2). Unknown keys are errors, so a
//! typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::Dur;

pub use crate::engine::policy::{
    ArtifactRetention, PolicyConfig, RecoveryConfig, RetentionConfig, WarnBefore,
};

/// A configuration problem: where, and what.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, unknown key or wrong type (the message includes line and column).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// toml's message, with line, column and the offending key.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("{file}: {key}: {problem}")]
    Invalid {
        /// The file (or `<built-in defaults>`).
        file: String,
        /// Dotted key, e.g. `policy.organization_max.acme`.
        key: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: the HTTP API.
    pub server: ServerConfig,
    /// `[store]`: where jobs, the queue and the audit log live.
    pub store: StoreConfig,
    /// `[policy]`: timeouts, grace, escalation.
    pub policy: PolicyConfig,
    /// `[retention]`: TTL after finish per outcome and per artifact type.
    pub retention: RetentionConfig,
    /// `[orphans]`: minimum ages and the periodic scan.
    pub orphans: OrphansConfig,
    /// `[safety]`: limits on destruction.
    pub safety: SafetyConfig,
    /// `[recovery]`: dead-job restarts.
    pub recovery: RecoveryConfig,
    /// `[queue]`: cleanup workers.
    pub queue: QueueConfig,
    /// `[annotations]`: names of the per-job settings.
    pub annotations: AnnotationsConfig,
    /// `[[hooks]]`: notifications on stages and escalation steps.
    pub hooks: Vec<HookConfig>,
    /// `[artifacts]`: object storage (file:// or s3://) for artifacts, partial saves and logs.
    #[serde(skip_serializing)]
    pub artifacts: crate::artifacts::config::ArtifactsConfig,
    /// `[kubernetes]`: the Kubernetes runtime (ignored by the local runtime).
    pub kubernetes: crate::kubernetes::config::KubernetesConfig,
    /// `[admission]`: the Kubernetes runtime's admission webhook (off by default).
    pub admission: crate::kubernetes::admission::AdmissionConfig,
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address (`--listen` overrides).
    pub listen: String,
    /// File holding the bearer token; required when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7800".to_owned(),
            token_file: None,
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://…`; default `sqlite://<data-dir>/jobwarden.db`.
    pub url: Option<String>,
}

/// `[orphans]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OrphansConfig {
    /// Minimum age of a local workspace or log file before it can be an orphan.
    pub local_min_age: Dur,
    /// Minimum age of an object-storage key before it can be an orphan.
    pub artifact_min_age: Dur,
    /// How often the periodic scan runs.
    pub scan_interval: Dur,
    /// Whether the periodic scan deletes what it finds (otherwise it only reports).
    pub clean: bool,
}

impl Default for OrphansConfig {
    fn default() -> Self {
        OrphansConfig {
            local_min_age: Dur::secs(3600),
            artifact_min_age: Dur::secs(7 * 86_400),
            scan_interval: Dur::secs(900),
            clean: false,
        }
    }
}

/// `[safety]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SafetyConfig {
    /// Destructive cleanup actions per minute (the timeout ladder's signals are exempt).
    pub max_deletions_per_minute: u32,
    /// Most deletions one pass of a background task makes.
    pub max_batch: u32,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        SafetyConfig {
            max_deletions_per_minute: 600,
            max_batch: 100,
        }
    }
}

/// `[queue]`: the durable cleanup queue's workers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Concurrent workers.
    pub workers: u32,
    /// How long a claimed task stays leased to its worker.
    pub lease: Dur,
    /// Attempts before a task is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff_initial: Dur,
    /// Longest retry delay.
    pub backoff_max: Dur,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            workers: 4,
            lease: Dur::secs(300),
            max_attempts: 8,
            backoff_initial: Dur::secs(5),
            backoff_max: Dur::secs(3600),
        }
    }
}

/// `[annotations]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnnotationsConfig {
    /// Prefix of the per-job annotations (`<prefix>timeout-seconds`, …).
    pub prefix: String,
}

impl Default for AnnotationsConfig {
    fn default() -> Self {
        AnnotationsConfig {
            prefix: "flowforge.io/".to_owned(),
        }
    }
}

/// One `[[hooks]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// A stage name or an escalation step.
    pub on: String,
    /// POST a JSON body with the job and the event here.
    pub webhook: Option<String>,
    /// Run this program with the job's fields in its environment.
    pub command: Option<Vec<String>>,
    /// Longest a single run may take.
    #[serde(default = "default_hook_timeout")]
    pub timeout: Dur,
    /// Retries after a failure.
    #[serde(default = "default_hook_retries")]
    pub retries: u32,
}

fn default_hook_timeout() -> Dur {
    Dur::secs(10)
}

fn default_hook_retries() -> u32 {
    2
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(file)?;
        Ok(config)
    }

    /// Checks values that parse but make no sense. `file` names the source in errors.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: String| {
            Err(ConfigError::Invalid {
                file: file.to_owned(),
                key: key.to_owned(),
                problem,
            })
        };
        let p = &self.policy;
        let (r, q) = (&self.recovery, &self.queue);
        // Durations that must be more than zero.
        let timeout = "a timeout must be greater than 0";
        let positive = [
            (
                "policy.global_default".to_owned(),
                p.global_default,
                timeout,
            ),
            ("policy.hard_max".to_owned(), p.hard_max, timeout),
            (
                "policy.startup_timeout".to_owned(),
                p.startup_timeout,
                "must be greater than 0",
            ),
        ];
        let per_org = p.organization_max.iter().map(|(org, d)| {
            (
                format!("policy.organization_max.{}", toml_key(org)),
                *d,
                timeout,
            )
        });
        let per_type = p.job_type_overrides.iter().map(|(t, d)| {
            (
                format!("policy.job_type_overrides.{}", toml_key(t)),
                *d,
                timeout,
            )
        });
        for (key, d, problem) in positive.into_iter().chain(per_org).chain(per_type) {
            if d.0.is_zero() {
                return bad(&key, problem.into());
            }
        }
        // Durations bounded by another setting.
        let bounded = [
            (
                "policy.global_default".to_owned(),
                p.global_default,
                "policy.hard_max",
                p.hard_max,
            ),
            (
                "policy.grace_period".to_owned(),
                p.grace_period,
                "policy.grace_max",
                p.grace_max,
            ),
            (
                "recovery.backoff_initial".to_owned(),
                r.backoff_initial,
                "recovery.backoff_max",
                r.backoff_max,
            ),
            (
                "queue.backoff_initial".to_owned(),
                q.backoff_initial,
                "queue.backoff_max",
                q.backoff_max,
            ),
        ];
        let per_type_grace = p.job_type_grace.iter().map(|(t, d)| {
            (
                format!("policy.job_type_grace.{}", toml_key(t)),
                *d,
                "policy.grace_max",
                p.grace_max,
            )
        });
        for (key, d, limit, max) in bounded.into_iter().chain(per_type_grace) {
            if d > max {
                return bad(&key, format!("{d} exceeds {limit} ({max})"));
            }
        }
        if let WarnBefore::Many(v) = &p.warn_before
            && v.is_empty()
        {
            return bad(
                "policy.warn_before",
                "an empty list; give at least one duration (or \"0s\" to warn at the deadline)"
                    .into(),
            );
        }
        // Organisations and job types: the one naming rule (an entry that breaks it could
        // never match a job, whose org and type are checked the same way).
        for (table, what, names) in [
            (
                "policy.organization_max",
                "organisation",
                p.organization_max.keys().collect::<Vec<_>>(),
            ),
            (
                "policy.job_type_overrides",
                "job type",
                p.job_type_overrides.keys().collect(),
            ),
            (
                "policy.job_type_grace",
                "job type",
                p.job_type_grace.keys().collect(),
            ),
        ] {
            for name in names {
                if let Err(e) = crate::model::check_name(what, name) {
                    return bad(&format!("{table}.{}", toml_key(name)), e.to_string());
                }
            }
        }
        if !(r.backoff_multiplier.is_finite() && r.backoff_multiplier >= 1.0) {
            return bad(
                "recovery.backoff_multiplier",
                format!("{} must be a number >= 1.0", r.backoff_multiplier),
            );
        }
        // Counts and intervals with a floor.
        let second = Duration::from_secs(1);
        let floors = [
            ("queue.workers", q.workers == 0, "must be at least 1"),
            (
                "queue.max_attempts",
                q.max_attempts == 0,
                "must be at least 1",
            ),
            ("queue.lease", q.lease.0 < second, "must be at least 1s"),
            (
                "safety.max_deletions_per_minute",
                self.safety.max_deletions_per_minute == 0,
                "must be at least 1 (cleanup would never run)",
            ),
            (
                "safety.max_batch",
                self.safety.max_batch == 0,
                "must be at least 1",
            ),
            (
                "orphans.scan_interval",
                self.orphans.scan_interval.0 < second,
                "must be at least 1s",
            ),
        ];
        if let Some((key, _, problem)) = floors.into_iter().find(|f| f.1) {
            return bad(key, problem.into());
        }
        if let Err(problems) = self.artifacts.validate()
            && let Some(first) = problems.into_iter().next()
        {
            return Err(ConfigError::Invalid {
                file: file.to_owned(),
                key: first.key.to_string(),
                problem: first.problem,
            });
        }
        if self.annotations.prefix.is_empty() {
            return bad("annotations.prefix", "must not be empty".into());
        }
        if let Err((key, problem)) = self.kubernetes.check(self.store.url.as_deref()) {
            return bad(&key, problem);
        }
        if let Err((key, problem)) = self.admission.check() {
            return bad(&key, problem);
        }
        for (i, h) in self.hooks.iter().enumerate() {
            let key = format!("hooks[{i}]");
            if !crate::engine::lifecycle::is_hook_event(&h.on) {
                return bad(
                    &format!("{key}.on"),
                    format!(
                        "unknown event {:?} (a stage: pre_start, running, completing, completed, failed, terminating, cleanup, cleaned; or a step: warn, soft_kill, hard_kill, force_delete)",
                        h.on
                    ),
                );
            }
            match (&h.webhook, &h.command) {
                (Some(_), Some(_)) => {
                    return bad(&key, "set either `webhook` or `command`, not both".into());
                }
                (None, None) => return bad(&key, "set `webhook` or `command`".into()),
                (Some(url), None) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return bad(
                            &format!("{key}.webhook"),
                            format!("{url:?} is not an http:// or https:// URL"),
                        );
                    }
                }
                (None, Some(cmd)) => {
                    if cmd.first().is_none_or(|c| c.is_empty()) {
                        return bad(
                            &format!("{key}.command"),
                            "must name a program as its first element".into(),
                        );
                    }
                }
            }
            if h.timeout.0.is_zero() {
                return bad(&format!("{key}.timeout"), "must be greater than 0".into());
            }
        }
        Ok(())
    }
}

/// `name` as a TOML key in a dotted path: bare when it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// The engine's policy is built from the config here: the engine never sees the config file's
/// types.
impl crate::engine::Policy {
    /// From the whole config.
    pub fn from_config(c: &Config) -> Self {
        crate::engine::Policy {
            warn_before: c.policy.warn_before.offsets(),
            retention: c.retention.clone(),
            recovery: c.recovery.clone(),
            limits: crate::engine::recovery::RecoveryLimits {
                startup_timeout: c.policy.startup_timeout.0,
                crash_loop_restarts: 5,
            },
            layout: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
[policy]
global_default = "2h"
grace_period = "5m"
hard_max = "24h"
warn_before = "10m"
[policy.organization_max]
acme = "30m"
[policy.job_type_overrides]
build = "1h"
[retention]
successful = "1h"
failed = "24h"
terminated = "24h"
[retention.artifacts]
logs = "7d"
partial = "3d"
"#;

    fn err(text: &str) -> String {
        Config::parse(text, "jw.toml")
            .expect_err("should be rejected")
            .to_string()
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let c = Config::default();
        c.validate("<built-in defaults>").expect("defaults valid");
        assert_eq!(c.policy.global_default.as_secs(), 7200);
        assert_eq!(c.policy.grace_max.as_secs(), 3600);
        assert_eq!(c.orphans.artifact_min_age.as_secs(), 7 * 86_400);
        assert_eq!(c.safety.max_deletions_per_minute, 600);
        let empty = Config::parse("", "empty.toml").expect("empty file is valid");
        assert_eq!(empty, c);
    }

    #[test]
    fn the_issue_example_parses() {
        let c = Config::parse(ISSUE_EXAMPLE, "jw.toml").expect("valid");
        assert_eq!(c.policy.organization_max["acme"].as_secs(), 1800);
        assert_eq!(c.policy.job_type_overrides["build"].as_secs(), 3600);
        assert_eq!(c.retention.artifacts.partial.as_secs(), 3 * 86_400);
        assert_eq!(
            c.policy.warn_before.offsets(),
            vec![Duration::from_secs(600)]
        );
    }

    #[test]
    fn warn_before_takes_a_list() {
        let c =
            Config::parse("[policy]\nwarn_before = [\"10m\", \"30m\", 600]\n", "f").expect("valid");
        assert_eq!(
            c.policy.warn_before.offsets(),
            vec![Duration::from_secs(1800), Duration::from_secs(600)]
        );
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let e = err("[policy]\nglobal_default = \"2x\"\n");
        assert!(
            e.contains("jw.toml") && e.contains("global_default") && e.contains("\"2x\""),
            "{e}"
        );
        let e = err("[policy]\nglobal_defualt = \"2h\"\n");
        assert!(e.contains("jw.toml") && e.contains("global_defualt"), "{e}");
        let e = err("[policy]\nglobal_default = \"0s\"\n");
        assert!(
            e.contains("policy.global_default") && e.contains("greater than 0"),
            "{e}"
        );
        let e = err("[policy.organization_max]\nacme = 0\n");
        assert!(e.contains("policy.organization_max.acme"), "{e}");
        let e = err("[policy]\nglobal_default = \"48h\"\n");
        assert!(e.contains("hard_max"), "{e}");
        let e = err("[policy]\ngrace_period = \"2h\"\n");
        assert!(
            e.contains("policy.grace_period") && e.contains("grace_max"),
            "{e}"
        );
        let e = err("[recovery]\nbackoff_multiplier = 0.5\n");
        assert!(e.contains("recovery.backoff_multiplier"), "{e}");
        let e = err("[[hooks]]\non = \"teminating\"\ncommand = [\"/bin/true\"]\n");
        assert!(e.contains("hooks[0].on") && e.contains("teminating"), "{e}");
        let e = err("[[hooks]]\non = \"warn\"\n");
        assert!(e.contains("hooks[0]") && e.contains("webhook"), "{e}");
        let e = err("[[hooks]]\non = \"warn\"\nwebhook = \"ftp://x\"\n");
        assert!(e.contains("hooks[0].webhook"), "{e}");
        let e = err("[policy\n");
        assert!(e.contains("jw.toml") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn org_and_type_names_follow_the_naming_rule() {
        let e = err("[policy.organization_max]\n\"../../x\" = \"1h\"\n");
        assert!(
            e.contains("jw.toml: policy.organization_max.\"../../x\": invalid organisation"),
            "{e}"
        );
        let e = err("[policy.organization_max]\n\"ünïcode-org\" = \"1h\"\n");
        assert!(e.contains("invalid organisation \"ünïcode-org\""), "{e}");
        let e = err("[policy.job_type_overrides]\n\"-build\" = \"1h\"\n");
        assert!(
            e.contains("policy.job_type_overrides.-build: invalid job type"),
            "{e}"
        );
        let e = err("[policy.job_type_grace]\n\"a b\" = \"1m\"\n");
        assert!(e.contains("policy.job_type_grace.\"a b\""), "{e}");
        Config::parse(
            "[policy.organization_max]\nacme-1 = \"1h\"\n\"team.x\" = \"2h\"\n[policy.job_type_overrides]\nBuild_2 = \"1h\"\n",
            "ok.toml",
        )
        .expect("valid names");
    }

    #[test]
    fn missing_file_names_it() {
        let e = Config::load(Path::new("/nonexistent/jw.toml")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/jw.toml"), "{e}");
    }
}
