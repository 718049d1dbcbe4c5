//! Policy resolution (pure): which timeout, grace period and TTL apply to a job.
//!
//! Precedence (with the seed's bug fixed): job override >
//! job-type override > global default, then **capped** by the organisation maximum and the
//! platform hard maximum. A job's own setting can never exceed its organisation's maximum
//! (invariant 6). The grace period resolves job > type > global and is capped by `grace_max`.
//!
//! Per-job settings arrive as annotations (Kubernetes) or flags (local). A malformed
//! annotation is never fatal and never silently ignored: resolution falls back to the next
//! level and returns a [`SettingWarning`] naming the job, the key and the value.
//!
//! The settings themselves ([`PolicyConfig`], [`RetentionConfig`], [`RecoveryConfig`]) are the
//! engine's types: `config.rs` reads them from the TOML file (and checks them there, naming
//! the file and the key), the engine only ever receives them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::{Dur, parse_duration};

// ----- the policy's settings (`[policy]`, `[retention]`, `[recovery]` of the config file) -----

/// `[policy]`: the timeout hierarchy and the escalation ladder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Timeout for jobs without a job or job-type override.
    pub global_default: Dur,
    /// Grace between soft_kill and hard_kill (and hard_kill and force_delete).
    pub grace_period: Dur,
    /// Upper bound on any grace period.
    pub grace_max: Dur,
    /// Platform-wide ceiling on any timeout.
    pub hard_max: Dur,
    /// Warn this long before the deadline; a list gives several warnings.
    pub warn_before: WarnBefore,
    /// Longest a job may stay pending (not started) before it is failed.
    pub startup_timeout: Dur,
    /// Per-organisation ceiling on timeouts; a job's own setting can never exceed it.
    pub organization_max: BTreeMap<String, Dur>,
    /// Timeout per job type.
    pub job_type_overrides: BTreeMap<String, Dur>,
    /// Grace period per job type.
    pub job_type_grace: BTreeMap<String, Dur>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            global_default: Dur::secs(2 * 3600),
            grace_period: Dur::secs(300),
            grace_max: Dur::secs(3600),
            hard_max: Dur::secs(24 * 3600),
            warn_before: WarnBefore::One(Dur::secs(600)),
            startup_timeout: Dur::secs(600),
            organization_max: BTreeMap::new(),
            job_type_overrides: BTreeMap::new(),
            job_type_grace: BTreeMap::new(),
        }
    }
}

/// `warn_before = "10m"` or `warn_before = ["30m", "10m"]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum WarnBefore {
    /// One warning.
    One(Dur),
    /// Several warnings.
    Many(Vec<Dur>),
}

impl WarnBefore {
    /// Offsets before the deadline, largest first, without duplicates.
    pub fn offsets(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = match self {
            WarnBefore::One(d) => vec![d.0],
            WarnBefore::Many(ds) => ds.iter().map(|d| d.0).collect(),
        };
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.dedup();
        v
    }
}

/// `[retention]`: how long finished jobs are kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// TTL after a successful finish.
    pub successful: Dur,
    /// TTL after a failure (also `lost`).
    pub failed: Dur,
    /// TTL after jobwarden terminated the job.
    pub terminated: Dur,
    /// Per artifact type: `logs`, `partial`, `artifacts` (default: the job's TTL).
    pub artifacts: ArtifactRetention,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            successful: Dur::secs(3600),
            failed: Dur::secs(24 * 3600),
            terminated: Dur::secs(24 * 3600),
            artifacts: ArtifactRetention::default(),
        }
    }
}

/// `[retention.artifacts]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactRetention {
    /// Job logs.
    pub logs: Dur,
    /// Work saved on termination (`partial/<id>/`).
    pub partial: Dur,
    /// Final artifacts; None means "the job's own TTL".
    pub artifacts: Option<Dur>,
}

impl Default for ArtifactRetention {
    fn default() -> Self {
        ArtifactRetention {
            logs: Dur::secs(7 * 86_400),
            partial: Dur::secs(3 * 86_400),
            artifacts: None,
        }
    }
}

/// `[recovery]`: what happens to dead jobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// Restarts before a dead job is marked failed.
    pub max_attempts: u32,
    /// Wait before the first restart.
    pub backoff_initial: Dur,
    /// Growth of the wait per attempt.
    pub backoff_multiplier: f64,
    /// Longest wait.
    pub backoff_max: Dur,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            max_attempts: 3,
            backoff_initial: Dur::secs(10),
            backoff_multiplier: 2.0,
            backoff_max: Dur::secs(3600),
        }
    }
}

/// A job's own settings, before policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobSettings {
    /// Organisation, for `organization_max`.
    pub org: Option<String>,
    /// Job type, for `job_type_overrides` / `job_type_grace`.
    pub job_type: Option<String>,
    /// Requested timeout.
    pub timeout: Option<Duration>,
    /// Kubernetes `spec.activeDeadlineSeconds`: also a job override; the smaller wins.
    pub active_deadline: Option<Duration>,
    /// Requested grace period.
    pub grace: Option<Duration>,
    /// Requested TTL after finish.
    pub ttl: Option<Duration>,
    /// Heartbeat threshold (opt-in dead-job detection).
    pub heartbeat_timeout: Option<Duration>,
}

/// A per-job setting that was ignored, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettingWarning {
    /// The job (name or id) it concerns.
    pub job: String,
    /// The annotation or flag.
    pub key: String,
    /// The value as given.
    pub value: String,
    /// What was wrong.
    pub problem: String,
    /// What is used instead (`the job type's or global timeout`, …).
    pub fallback: String,
}

impl std::fmt::Display for SettingWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "job {}: ignoring {}={:?}: {}; using {}",
            self.job, self.key, self.value, self.problem, self.fallback
        )
    }
}

/// Where the effective timeout came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutSource {
    /// The job's own setting (annotation, flag or activeDeadlineSeconds).
    Job,
    /// `policy.job_type_overrides`.
    JobType,
    /// `policy.global_default`.
    Global,
}

impl TimeoutSource {
    /// The level's name (as serialised): `job`, `job_type`, `global`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutSource::Job => "job",
            TimeoutSource::JobType => "job_type",
            TimeoutSource::Global => "global",
        }
    }

    /// In words, for the console: `the job's own`, `its job type's`, `the global default`.
    pub fn words(self) -> &'static str {
        match self {
            TimeoutSource::Job => "the job's own",
            TimeoutSource::JobType => "its job type's",
            TimeoutSource::Global => "the global default",
        }
    }
}

/// What capped the timeout, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cap {
    /// `policy.organization_max`.
    OrganizationMax,
    /// `policy.hard_max`.
    HardMax,
}

/// The resolved policy for one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// Effective timeout (> 0, ≤ org max, ≤ hard max).
    pub timeout: Duration,
    /// Where the uncapped value came from.
    pub source: TimeoutSource,
    /// What lowered it, if anything.
    pub capped_by: Option<Cap>,
    /// The timeout before the caps (equal to `timeout` when nothing capped it).
    pub uncapped: Duration,
    /// Effective grace period (≤ grace_max).
    pub grace: Duration,
    /// Where the grace period came from (before `grace_max`): the job, its type
    /// (`policy.job_type_grace`) or `policy.grace_period`.
    pub grace_source: TimeoutSource,
    /// `policy.grace_max` lowered the grace period.
    pub grace_capped: bool,
    /// The job's TTL override, if any (otherwise retention per outcome applies).
    pub ttl: Option<Duration>,
    /// Heartbeat threshold, if the job opted in.
    pub heartbeat_timeout: Option<Duration>,
}

/// Resolves the effective timeout and grace for a job.
pub fn resolve(job: &JobSettings, policy: &PolicyConfig) -> Resolved {
    let own = match (job.timeout, job.active_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
    .filter(|d| !d.is_zero());
    let type_default = job
        .job_type
        .as_ref()
        .and_then(|t| policy.job_type_overrides.get(t))
        .map(|d| d.0);
    let (mut timeout, source) = match (own, type_default) {
        (Some(d), _) => (d, TimeoutSource::Job),
        (None, Some(d)) => (d, TimeoutSource::JobType),
        (None, None) => (policy.global_default.0, TimeoutSource::Global),
    };
    let uncapped = timeout;
    let mut capped_by = None;
    if let Some(max) = job
        .org
        .as_ref()
        .and_then(|o| policy.organization_max.get(o))
        .map(|d| d.0)
        .filter(|d| !d.is_zero())
        && timeout > max
    {
        timeout = max;
        capped_by = Some(Cap::OrganizationMax);
    }
    if !policy.hard_max.0.is_zero() && timeout > policy.hard_max.0 {
        timeout = policy.hard_max.0;
        capped_by = Some(Cap::HardMax);
    }
    if timeout.is_zero() {
        // Only reachable with an unvalidated config; a zero timeout would kill at once.
        timeout = Duration::from_secs(1);
    }
    let type_grace = job
        .job_type
        .as_ref()
        .and_then(|t| policy.job_type_grace.get(t))
        .map(|d| d.0);
    let (grace, grace_source) = match (job.grace, type_grace) {
        (Some(g), _) => (g, TimeoutSource::Job),
        (None, Some(g)) => (g, TimeoutSource::JobType),
        (None, None) => (policy.grace_period.0, TimeoutSource::Global),
    };
    let grace_capped = grace > policy.grace_max.0;
    Resolved {
        timeout,
        source,
        capped_by,
        uncapped,
        grace: grace.min(policy.grace_max.0),
        grace_source,
        grace_capped,
        ttl: job.ttl,
        heartbeat_timeout: job.heartbeat_timeout.filter(|d| !d.is_zero()),
    }
}

impl Resolved {
    /// Where the effective timeout came from, as recorded on a Job (`<prefix>timeout-source`):
    /// the level (`job`, `job_type`, `global`), or the cap that lowered it
    /// (`organization_max`, `hard_max`).
    pub fn timeout_origin(&self) -> &'static str {
        match self.capped_by {
            Some(Cap::OrganizationMax) => "organization_max",
            Some(Cap::HardMax) => "hard_max",
            None => self.source.as_str(),
        }
    }

    /// Where the effective grace period came from (`<prefix>grace-source`): the level, or
    /// `grace_max` when that lowered it.
    pub fn grace_origin(&self) -> &'static str {
        if self.grace_capped {
            "grace_max"
        } else {
            self.grace_source.as_str()
        }
    }
}

impl Cap {
    /// In words: `the organisation maximum`, `the platform hard maximum`.
    pub fn words(self) -> &'static str {
        match self {
            Cap::OrganizationMax => "the organisation maximum",
            Cap::HardMax => "the platform hard maximum",
        }
    }
}

/// Where a job's effective timeout came from, kept in its record (`JobRecord.spec.policy`,
/// [`Resolution::KEY`]) when the policy resolves it: the console shows it, and the reclaimed
/// report reads the timeout the job would have had without jobwarden's cap. A record written
/// before this was kept has none (shown as unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Resolution {
    /// Where the uncapped value came from.
    pub source: TimeoutSource,
    /// What lowered it, if anything.
    pub capped_by: Option<Cap>,
    /// The timeout before the caps, in seconds.
    pub uncapped_seconds: u64,
}

impl Resolution {
    /// The `spec` key it is kept under.
    pub const KEY: &'static str = "policy";

    /// What `resolved` says about its timeout.
    pub fn of(resolved: &Resolved) -> Self {
        Resolution {
            source: resolved.source,
            capped_by: resolved.capped_by,
            uncapped_seconds: resolved.uncapped.as_secs(),
        }
    }

    /// The one kept in `spec` (a record's `spec`), if any.
    pub fn from_spec(spec: &serde_json::Value) -> Option<Self> {
        serde_json::from_value(spec.get(Self::KEY)?.clone()).ok()
    }

    /// As JSON, for `spec`.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// In words: `the job's own (capped by the organisation maximum)`.
    pub fn words(&self) -> String {
        match self.capped_by {
            Some(cap) => format!("{}, capped by {}", self.source.words(), cap.words()),
            None => self.source.words().to_owned(),
        }
    }
}

/// Annotation names under a configurable prefix (default `flowforge.io/`).
#[derive(Debug, Clone)]
pub struct AnnotationKeys {
    /// `<prefix>timeout-seconds`
    pub timeout: String,
    /// `<prefix>grace-period-seconds`
    pub grace: String,
    /// `<prefix>ttl-seconds-after-finished`
    pub ttl: String,
    /// `<prefix>heartbeat-timeout-seconds`
    pub heartbeat_timeout: String,
    /// `<prefix>organization-id`
    pub org: String,
    /// `<prefix>job-type`
    pub job_type: String,
    /// `<prefix>timeout-source`: where a recorded timeout came from ([`Resolved::timeout_origin`]).
    /// Written by `manifest job` and admission; never read back as a setting.
    pub timeout_source: String,
    /// `<prefix>grace-source`: where a recorded grace period came from
    /// ([`Resolved::grace_origin`]).
    pub grace_source: String,
}

impl AnnotationKeys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        AnnotationKeys {
            timeout: format!("{prefix}timeout-seconds"),
            grace: format!("{prefix}grace-period-seconds"),
            ttl: format!("{prefix}ttl-seconds-after-finished"),
            heartbeat_timeout: format!("{prefix}heartbeat-timeout-seconds"),
            org: format!("{prefix}organization-id"),
            job_type: format!("{prefix}job-type"),
            timeout_source: format!("{prefix}timeout-source"),
            grace_source: format!("{prefix}grace-source"),
        }
    }
}

/// Reads a job's settings from its annotations (and labels, for org and type).
///
/// Malformed values are dropped with a warning; resolution then falls back to the next level.
pub fn settings_from_annotations(
    job: &str,
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    keys: &AnnotationKeys,
) -> (JobSettings, Vec<SettingWarning>) {
    let mut warnings = Vec::new();
    let mut duration = |key: &str, zero_ok: bool, fallback: &str| -> Option<Duration> {
        let value = annotations.get(key)?;
        match parse_duration(value) {
            Ok(d) if d.is_zero() && !zero_ok => {
                warnings.push(SettingWarning {
                    job: job.to_owned(),
                    key: key.to_owned(),
                    value: value.clone(),
                    problem: "must be greater than 0".to_owned(),
                    fallback: fallback.to_owned(),
                });
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                warnings.push(SettingWarning {
                    job: job.to_owned(),
                    key: key.to_owned(),
                    value: value.clone(),
                    problem: e.problem.to_string(),
                    fallback: fallback.to_owned(),
                });
                None
            }
        }
    };
    let timeout = duration(&keys.timeout, false, "the job type's or global timeout");
    let grace = duration(&keys.grace, true, "the job type's or global grace period");
    let ttl = duration(&keys.ttl, true, "the retention for the job's outcome");
    let heartbeat_timeout = duration(
        &keys.heartbeat_timeout,
        false,
        "no heartbeat check (the job is never judged dead)",
    );
    // Organisation and job type: the label wins over the annotation; an empty value means
    // none; a value that breaks the naming rule is dropped with a warning, like a malformed
    // duration (it could match no `organization_max` entry, and could not be an object key).
    let mut name = |key: &str, what: &'static str, fallback: &str| -> Option<String> {
        let value = labels
            .get(key)
            .or_else(|| annotations.get(key))
            .filter(|v| !v.is_empty())?;
        match crate::model::check_name(what, value) {
            Ok(()) => Some(value.clone()),
            Err(e) => {
                warnings.push(SettingWarning {
                    job: job.to_owned(),
                    key: key.to_owned(),
                    value: value.clone(),
                    problem: e.to_string(),
                    fallback: fallback.to_owned(),
                });
                None
            }
        }
    };
    let org = name(
        &keys.org,
        "organisation",
        "no organisation (no organisation maximum applies)",
    );
    let job_type = name(
        &keys.job_type,
        "job type",
        "no job type (the global timeout and grace apply)",
    );
    (
        JobSettings {
            org,
            job_type,
            timeout,
            active_deadline: None,
            grace,
            ttl,
            heartbeat_timeout,
        },
        warnings,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::Dur;
    use proptest::prelude::*;

    fn policy() -> PolicyConfig {
        let mut p = PolicyConfig::default();
        p.organization_max.insert("acme".into(), Dur::secs(1800));
        p.job_type_overrides.insert("build".into(), Dur::secs(3600));
        p.job_type_grace.insert("build".into(), Dur::secs(60));
        p
    }

    fn job(org: Option<&str>, ty: Option<&str>, timeout: Option<u64>) -> JobSettings {
        JobSettings {
            org: org.map(Into::into),
            job_type: ty.map(Into::into),
            timeout: timeout.map(Duration::from_secs),
            ..JobSettings::default()
        }
    }

    #[test]
    fn precedence_job_then_type_then_global() {
        let p = policy();
        let r = resolve(&job(None, Some("build"), Some(600)), &p);
        assert_eq!((r.timeout.as_secs(), r.source), (600, TimeoutSource::Job));
        let r = resolve(&job(None, Some("build"), None), &p);
        assert_eq!(
            (r.timeout.as_secs(), r.source),
            (3600, TimeoutSource::JobType)
        );
        let r = resolve(&job(None, Some("other"), None), &p);
        assert_eq!(
            (r.timeout.as_secs(), r.source),
            (7200, TimeoutSource::Global)
        );
    }

    #[test]
    fn org_max_caps_even_the_jobs_own_setting() {
        // The seed let a job annotation beat the org max; here it cannot.
        let p = policy();
        let r = resolve(&job(Some("acme"), None, Some(36_000)), &p);
        assert_eq!(r.timeout.as_secs(), 1800);
        assert_eq!(r.capped_by, Some(Cap::OrganizationMax));
        let r = resolve(&job(Some("acme"), Some("build"), None), &p);
        assert_eq!(r.timeout.as_secs(), 1800);
        let r = resolve(&job(Some("acme"), None, Some(60)), &p);
        assert_eq!((r.timeout.as_secs(), r.capped_by), (60, None));
        assert_eq!(r.timeout_origin(), "job");
        let r = resolve(&job(Some("acme"), Some("build"), None), &p);
        assert_eq!(
            (r.source, r.timeout_origin()),
            (TimeoutSource::JobType, "organization_max")
        );
    }

    #[test]
    fn hard_max_caps_everything() {
        let p = policy();
        let r = resolve(&job(Some("other"), None, Some(100 * 3600)), &p);
        assert_eq!(
            (r.timeout.as_secs(), r.capped_by),
            (24 * 3600, Some(Cap::HardMax))
        );
        assert_eq!(r.timeout_origin(), "hard_max");
    }

    #[test]
    fn active_deadline_counts_as_job_override_smaller_wins() {
        let p = policy();
        let mut j = job(None, None, Some(600));
        j.active_deadline = Some(Duration::from_secs(300));
        assert_eq!(resolve(&j, &p).timeout.as_secs(), 300);
        j.active_deadline = Some(Duration::from_secs(6000));
        assert_eq!(resolve(&j, &p).timeout.as_secs(), 600);
        j.timeout = None;
        assert_eq!(resolve(&j, &p).timeout.as_secs(), 6000);
    }

    #[test]
    fn grace_resolves_job_type_global_capped() {
        let p = policy();
        let mut j = job(None, Some("build"), None);
        let r = resolve(&j, &p);
        assert_eq!((r.grace.as_secs(), r.grace_origin()), (60, "job_type"));
        j.grace = Some(Duration::from_secs(120));
        let r = resolve(&j, &p);
        assert_eq!((r.grace.as_secs(), r.grace_origin()), (120, "job"));
        j.grace = Some(Duration::from_secs(7200));
        let r = resolve(&j, &p);
        assert_eq!((r.grace.as_secs(), r.grace_origin()), (3600, "grace_max"));
        assert_eq!(r.grace_source, TimeoutSource::Job);
        let r = resolve(&job(None, None, None), &p);
        assert_eq!((r.grace.as_secs(), r.grace_origin()), (300, "global"));
    }

    #[test]
    fn malformed_annotations_fall_back_with_a_named_warning() {
        let keys = AnnotationKeys::new("flowforge.io/");
        let ann: BTreeMap<String, String> = [
            ("flowforge.io/timeout-seconds", "2 hours"),
            ("flowforge.io/grace-period-seconds", "-5"),
            ("flowforge.io/ttl-seconds-after-finished", "90m"),
            ("flowforge.io/job-type", "build"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (s, w) = settings_from_annotations("ns/claude-job-1", &ann, &BTreeMap::new(), &keys);
        assert_eq!(s.timeout, None);
        assert_eq!(s.grace, None);
        assert_eq!(s.ttl, Some(Duration::from_secs(5400)));
        assert_eq!(w.len(), 2);
        let text = w[0].to_string();
        assert!(
            text.contains("ns/claude-job-1")
                && text.contains("flowforge.io/timeout-seconds")
                && text.contains("2 hours"),
            "{text}"
        );
        let r = resolve(&s, &policy());
        assert_eq!(
            (r.timeout.as_secs(), r.source),
            (3600, TimeoutSource::JobType)
        );
    }

    #[test]
    fn zero_timeout_annotation_is_rejected_zero_ttl_accepted() {
        let keys = AnnotationKeys::new("x/");
        let ann: BTreeMap<String, String> = [
            ("x/timeout-seconds", "0"),
            ("x/ttl-seconds-after-finished", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (s, w) = settings_from_annotations("j", &ann, &BTreeMap::new(), &keys);
        assert_eq!(s.timeout, None);
        assert_eq!(s.ttl, Some(Duration::ZERO));
        assert_eq!(w.len(), 1);
        assert!(w[0].problem.contains("greater than 0"));
    }

    #[test]
    fn org_and_type_that_break_the_naming_rule_are_dropped_with_a_named_warning() {
        let keys = AnnotationKeys::new("flowforge.io/");
        let ann = BTreeMap::from([
            (
                "flowforge.io/organization-id".to_owned(),
                "../../x".to_owned(),
            ),
            ("flowforge.io/job-type".to_owned(), "ünïcode".to_owned()),
        ]);
        let (s, w) = settings_from_annotations("ns/j", &ann, &BTreeMap::new(), &keys);
        assert_eq!((s.org, s.job_type), (None, None));
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w[0].key, "flowforge.io/organization-id");
        assert_eq!(w[0].value, "../../x");
        assert!(
            w[0].problem.contains("invalid organisation") && w[0].fallback.starts_with("no "),
            "{w:?}"
        );
        assert_eq!(w[1].key, "flowforge.io/job-type");
    }

    #[test]
    fn labels_win_for_org_and_type() {
        let keys = AnnotationKeys::new("flowforge.io/");
        let ann = BTreeMap::from([("flowforge.io/organization-id".to_owned(), "a".to_owned())]);
        let labels = BTreeMap::from([("flowforge.io/organization-id".to_owned(), "b".to_owned())]);
        let (s, _) = settings_from_annotations("j", &ann, &labels, &keys);
        assert_eq!(s.org.as_deref(), Some("b"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("JOBWARDEN_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]
        #[test]
        fn effective_timeout_is_positive_and_never_exceeds_caps(
            own in proptest::option::of(0u64..10_000_000),
            ads in proptest::option::of(0u64..10_000_000),
            type_t in proptest::option::of(1u64..10_000_000),
            org_max in proptest::option::of(1u64..10_000_000),
            global in 1u64..10_000_000,
            hard in 1u64..10_000_000,
            grace in proptest::option::of(0u64..10_000_000),
        ) {
            let mut p = PolicyConfig { global_default: Dur::secs(global), hard_max: Dur::secs(hard), ..PolicyConfig::default() };
            if let Some(t) = type_t { p.job_type_overrides.insert("t".into(), Dur::secs(t)); }
            if let Some(m) = org_max { p.organization_max.insert("o".into(), Dur::secs(m)); }
            let j = JobSettings {
                org: Some("o".into()), job_type: Some("t".into()),
                timeout: own.map(Duration::from_secs), active_deadline: ads.map(Duration::from_secs),
                grace: grace.map(Duration::from_secs), ..JobSettings::default()
            };
            let r = resolve(&j, &p);
            prop_assert!(r.timeout > Duration::ZERO);
            prop_assert!(r.timeout.as_secs() <= hard);
            if let Some(m) = org_max { prop_assert!(r.timeout.as_secs() <= m); }
            prop_assert!(r.grace <= p.grace_max.0);
        }

        #[test]
        fn annotations_never_panic(
            t in "\\PC{0,12}", g in "\\PC{0,12}", ttl in "\\PC{0,12}", hb in "[0-9a-z.-]{0,8}",
        ) {
            let keys = AnnotationKeys::new("flowforge.io/");
            let ann: BTreeMap<String, String> = [
                (keys.timeout.clone(), t), (keys.grace.clone(), g),
                (keys.ttl.clone(), ttl), (keys.heartbeat_timeout.clone(), hb),
            ].into_iter().collect();
            let (s, w) = settings_from_annotations("j", &ann, &BTreeMap::new(), &keys);
            // Every annotation is either used or warned about; none silently ignored.
            let used = [s.timeout.is_some(), s.grace.is_some(), s.ttl.is_some(), s.heartbeat_timeout.is_some()]
                .iter().filter(|b| **b).count();
            prop_assert_eq!(used + w.len(), 4);
            let r = resolve(&s, &PolicyConfig::default());
            prop_assert!(r.timeout > Duration::ZERO);
        }
    }
}
