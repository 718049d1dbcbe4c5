//! The records jobwarden keeps and passes between the engine, the runtimes and the store.
//!
//! Plain data: no I/O, no clock. The store persists these types; the engine reads them; the
//! HTTP API serialises them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time (UTC). Serialised as RFC 3339 with at least millisecond precision.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// `ts + d`, saturating far in the future instead of overflowing.
pub fn add(ts: Timestamp, d: Duration) -> Timestamp {
    chrono::TimeDelta::from_std(d)
        .ok()
        .and_then(|d| ts.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

/// `ts - d`, saturating far in the past instead of overflowing.
pub fn sub(ts: Timestamp, d: Duration) -> Timestamp {
    chrono::TimeDelta::from_std(d)
        .ok()
        .and_then(|d| ts.checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

/// `later - earlier` as a std duration, zero when `later` is not after `earlier`.
pub fn since(later: Timestamp, earlier: Timestamp) -> Duration {
    (later - earlier).to_std().unwrap_or(Duration::ZERO)
}

/// Formats a timestamp as RFC 3339 UTC with millisecond precision (`2026-11-28T09:45:14.123Z`).
pub fn fmt_ts(ts: Timestamp) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The longest job id, organisation or job-type name: a Kubernetes label value's limit.
pub const NAME_MAX: usize = 63;

/// The rule every job id, organisation name and job-type name follows, in words (for error
/// messages and the README): a valid Kubernetes label value.
pub const NAME_RULE: &str =
    "1 to 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit";

/// Why `s` breaks the one naming rule for job ids, organisations and job types ([`NAME_RULE`]),
/// or `None` when it follows it. No allocation (called once per listed object key).
///
/// The rule is a Kubernetes label value's (job ids and organisations are label values there),
/// and it keeps every such name safe as one path segment, object-key segment, git ref part and
/// URL segment: no `/`, no `..`/`.` on their own, no leading dot (no hidden files), nothing
/// outside ASCII.
pub fn name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("it is empty");
    }
    if s.len() > NAME_MAX {
        return Some("it is longer than 63 characters");
    }
    let bytes = s.as_bytes();
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Some("only letters, digits, '-', '_' and '.' are allowed");
    }
    let ends_ok = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    if !ends_ok(bytes.first()) || !ends_ok(bytes.last()) {
        return Some("it must begin and end with a letter or digit");
    }
    None
}

/// A name that breaks [`NAME_RULE`]: which kind of name, the input, and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {problem}; {what} names are {rule}", rule = NAME_RULE)]
pub struct NameError {
    /// `organisation`, `job type`.
    pub what: &'static str,
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// Checks an organisation or job-type name (`what` names it in the error) against
/// [`NAME_RULE`].
pub fn check_name(what: &'static str, s: &str) -> Result<(), NameError> {
    match name_problem(s) {
        None => Ok(()),
        Some(problem) => Err(NameError {
            what,
            input: s.to_owned(),
            problem,
        }),
    }
}

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job id {input:?}: {problem}")]
pub struct IdError {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// A job id: [`NAME_RULE`] (1–63 of `[A-Za-z0-9._-]`, a letter or digit at both ends).
///
/// It is used verbatim in file names, object keys, git refs, URLs and Kubernetes label values,
/// so anything that could escape a path prefix, hide as a dot-file or inject into a ref is
/// refused here, once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// Validates `s` as a job id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        match name_problem(s) {
            None => Ok(JobId(s.to_owned())),
            Some(problem) => Err(IdError {
                input: s.to_owned(),
                problem,
            }),
        }
    }

    /// Whether `s` is a valid job id (as [`JobId::parse`], without allocating).
    pub fn is_valid(s: &str) -> bool {
        name_problem(s).is_none()
    }

    /// A fresh id: a lowercase ULID (26 characters, sortable by creation time, unique).
    pub fn generate(now: Timestamp) -> Self {
        let ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        let ulid = ulid::Ulid::from_parts(ms, rand::random::<u128>());
        JobId(ulid.to_string().to_ascii_lowercase())
    }

    /// Whether this id has the form of one [`JobId::generate`] makes: 26 characters of
    /// lowercase Crockford base32 (`0-9 a-z` without `i l o u`), the first at most `7`.
    ///
    /// The local runtime only ever creates jobs with such ids, so its orphan passes
    /// (workspaces, log files, object keys) never consider any other name: a directory
    /// called `not-a-job` or `cache` is not a job's, whatever the store says.
    pub fn is_generated(&self) -> bool {
        is_generated_id(&self.0)
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// See [`JobId::is_generated`].
pub fn is_generated_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 26
        && b[0] <= b'7'
        && b.iter().all(|c| {
            (c.is_ascii_digit() || c.is_ascii_lowercase())
                && !matches!(c, b'i' | b'l' | b'o' | b'u')
        })
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for JobId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobId::parse(s)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        JobId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A type's name in words, for messages: `AuditAction` is `audit action`.
pub fn type_words(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Defines a string-valued enum with `as_str`, `FromStr`, `Display` and serde in snake_case.
macro_rules! string_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $v,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v,)+];
            /// The stable name used in the store, the API and the config.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = $crate::model::UnknownName;
            fn from_str(s: &str) -> Result<Self, $crate::model::UnknownName> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err($crate::model::UnknownName {
                        kind: $crate::model::type_words(stringify!($name)),
                        value: s.to_owned(),
                        expected: &[$($s),+],
                    }),
                }
            }
        }
    };
}
pub(crate) use string_enum;

/// A name that is none of an enumeration's (a stage, a step, an audit action…).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} (expected one of: {})", expected.join(", "))]
pub struct UnknownName {
    /// What it should name (`stage`, `audit action`).
    pub kind: String,
    /// What was given.
    pub value: String,
    /// The names there are.
    pub expected: &'static [&'static str],
}

string_enum! {
    /// Lifecycle stage of a job (the README's Concepts, "Stages").
    pub enum Stage {
        /// Accepted, not yet started (pending, pulling images, pre_start hooks).
        PreStart => "pre_start",
        /// Its process or pods run.
        Running => "running",
        /// Its outcome is decided but it has not ended: a Kubernetes Job at `FailureTarget` /
        /// `SuccessCriteriaMet` (not ended by jobwarden) whose pods are still terminating.
        /// Active: the ladder goes on until no pod is left.
        Completing => "completing",
        /// Finished: its process exited 0 (a local job that saved its work and exited 0 after
        /// jobwarden's SIGTERM too: outcome `terminated`) or its Job completed; waiting for its
        /// TTL.
        Completed => "completed",
        /// Finished any other way (a non-zero exit, a signal, lost, ended by jobwarden);
        /// waiting for its TTL.
        Failed => "failed",
        /// jobwarden is ending it (soft_kill sent, grace running).
        Terminating => "terminating",
        /// Its TTL expired; its resources are being removed.
        Cleanup => "cleanup",
        /// Resources removed; the record and its audit rows stay.
        Cleaned => "cleaned",
    }
}

impl Stage {
    /// The job's process/pods may still run.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Stage::PreStart | Stage::Running | Stage::Terminating | Stage::Completing
        )
    }
}

string_enum! {
    /// How a run ended.
    pub enum Outcome {
        /// Exit status 0.
        Succeeded => "succeeded",
        /// Non-zero exit, or killed by a signal jobwarden did not send.
        Failed => "failed",
        /// jobwarden ended it (timeout or cancel), whatever the exit status.
        Terminated => "terminated",
        /// Vanished while the daemon was down; status unknown.
        Lost => "lost",
    }
}

string_enum! {
    /// A step of the escalation ladder.
    pub enum Step {
        /// Notify (audit, log, hooks); never touches the job.
        Warn => "warn",
        /// SIGTERM / let the Job controller end the Job.
        SoftKill => "soft_kill",
        /// SIGKILL / delete pods with grace 0.
        HardKill => "hard_kill",
        /// Remove whatever is left.
        ForceDelete => "force_delete",
    }
}

string_enum! {
    /// The `action` column of the audit log.
    pub enum AuditAction {
        /// Warning before the deadline.
        Warn => "warn",
        /// SIGTERM / activeDeadlineSeconds patch.
        SoftKill => "soft_kill",
        /// SIGKILL / pod delete with grace 0.
        HardKill => "hard_kill",
        /// Force removal after 2 × grace.
        ForceDelete => "force_delete",
        /// Removal of a finished job's resources after its TTL.
        TtlCleanup => "ttl_cleanup",
        /// Removal of a resource whose job does not exist.
        OrphanCleanup => "orphan_cleanup",
        /// A dead job restarted or recreated.
        Recover => "recover",
        /// A dead job given up on.
        MarkFailed => "mark_failed",
        /// A job was cancelled by a user (followed by the ladder).
        Cancel => "cancel",
        /// A malformed setting was ignored (annotation, flag).
        ConfigWarning => "config_warning",
        /// A hook ran (or failed).
        Hook => "hook",
        /// The admission webhook denied a Job or CronJob (`initiated_by = admission`): its
        /// requested timeout exceeds a maximum, or a setting is malformed. The object was
        /// never created.
        AdmissionDenied => "admission_denied",
    }
}

impl From<Step> for AuditAction {
    fn from(s: Step) -> Self {
        match s {
            Step::Warn => AuditAction::Warn,
            Step::SoftKill => AuditAction::SoftKill,
            Step::HardKill => AuditAction::HardKill,
            Step::ForceDelete => AuditAction::ForceDelete,
        }
    }
}

/// An escalation step that was carried out (or decided, in dry-run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTaken {
    /// Which step.
    pub step: Step,
    /// When it was due.
    pub due_at: Timestamp,
    /// When it was carried out.
    pub at: Timestamp,
}

/// Which runtime owns a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// An OS process group on this machine.
    Local,
    /// A batch/v1 Job.
    Kubernetes,
}

impl RuntimeKind {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Local => "local",
            RuntimeKind::Kubernetes => "kubernetes",
        }
    }
}

/// One job as the store keeps it: identity, policy outcome, progress and runtime handles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job id (`submit` prints it; the Kubernetes job-id label's value).
    pub id: JobId,
    /// Identity of the current run: a fresh value per (re)start; the Kubernetes Job UID.
    /// Steps and TTLs are keyed on it, so a retried run is never judged by an earlier run.
    pub run_id: String,
    /// 0 for the first run, +1 per recovery restart.
    pub attempt: u32,
    /// Owning runtime.
    pub runtime: RuntimeKind,
    /// Kubernetes namespace (None for local jobs).
    pub namespace: Option<String>,
    /// Human name (the Kubernetes Job name).
    pub name: String,
    /// Organisation (for `organization_max`).
    pub org: Option<String>,
    /// Job type (for `job_type_overrides`).
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    /// Lifecycle stage.
    pub stage: Stage,
    /// Outcome once finished.
    pub outcome: Option<Outcome>,
    /// Why it ended / why it failed, for humans.
    pub reason: Option<String>,
    /// When jobwarden first saw it.
    pub created_at: Timestamp,
    /// When its current run started (process spawn, Job `status.startTime`).
    pub started_at: Option<Timestamp>,
    /// When its current run finished.
    pub finished_at: Option<Timestamp>,
    /// Effective timeout after the policy hierarchy and caps.
    pub timeout: Duration,
    /// Effective grace period.
    pub grace: Duration,
    /// TTL after finish requested for this job (None: the outcome's retention applies).
    pub ttl: Option<Duration>,
    /// `started_at + timeout` (None until started).
    pub deadline: Option<Timestamp>,
    /// Escalation steps carried out in the current run.
    pub steps: Vec<StepTaken>,
    /// Heartbeat threshold; None means "never judged dead by heartbeat".
    pub heartbeat_timeout: Option<Duration>,
    /// Last heartbeat received.
    pub last_heartbeat: Option<Timestamp>,
    /// Recovery attempts made so far.
    pub recovery_attempts: u32,
    /// Local runtime: process group leader pid.
    pub pid: Option<i32>,
    /// Local runtime: the pid's start time in clock ticks since boot (`/proc/PID/stat` field 22),
    /// so a reused pid is never signalled.
    pub pid_start_ticks: Option<u64>,
    /// Exit status, when it exited normally.
    pub exit_code: Option<i32>,
    /// Terminating signal, when killed by one.
    pub signal: Option<i32>,
    /// What is needed to start it again (command, env; the Kubernetes Job spec).
    pub spec: serde_json::Value,
    /// Set by dry-run daemons: decisions are recorded but not carried out.
    pub dry_run: bool,
}

impl JobRecord {
    /// A job first seen (or submitted) at `created_at`, not started: stage `pre_start`, no
    /// policy resolved yet (timeout and grace zero), no run state. Callers set what they know
    /// with struct update syntax.
    pub fn new(
        id: JobId,
        run_id: impl Into<String>,
        runtime: RuntimeKind,
        name: impl Into<String>,
        created_at: Timestamp,
    ) -> Self {
        JobRecord {
            id,
            run_id: run_id.into(),
            attempt: 0,
            runtime,
            namespace: None,
            name: name.into(),
            org: None,
            job_type: None,
            stage: Stage::PreStart,
            outcome: None,
            reason: None,
            created_at,
            started_at: None,
            finished_at: None,
            timeout: Duration::ZERO,
            grace: Duration::ZERO,
            ttl: None,
            deadline: None,
            steps: Vec::new(),
            heartbeat_timeout: None,
            last_heartbeat: None,
            recovery_attempts: 0,
            pid: None,
            pid_start_ticks: None,
            exit_code: None,
            signal: None,
            spec: serde_json::Value::Null,
            dry_run: false,
        }
    }

    /// Whether `step` was already taken in the current run.
    pub fn has_step(&self, step: Step) -> bool {
        self.steps.iter().any(|s| s.step == step)
    }
}

/// One row of `cleanup_audit_log` (the seed's columns plus dry-run marking and details).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Row id (assigned by the store; 0 before insert).
    pub id: i64,
    /// When the action happened.
    pub timestamp: Timestamp,
    /// The job it concerns.
    pub job_id: String,
    /// `process`, `workspace`, `log`, `job`, `pod`, `pvc`, `secret`, `configmap`, `object_prefix`…
    pub resource_type: String,
    /// The resource's name (pid, path, namespace/name, key prefix).
    pub resource_name: String,
    /// What was done.
    pub action: AuditAction,
    /// Why.
    pub reason: String,
    /// `jobwarden` (engine), `user:<name>`, `api`…
    pub initiated_by: String,
    /// Whether it worked.
    pub success: bool,
    /// The error when it did not.
    pub error_message: Option<String>,
    /// Decided but not carried out (`--dry-run`).
    pub dry_run: bool,
    /// Extra facts (object counts, bytes, exit status) as JSON.
    pub details: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_refuse_path_and_ref_escapes() {
        for bad in [
            "", ".", "..", "a/b", "../x", "a b", "a\nb", "a\0b", "ä", "x:y", "a~1", "a^", ".cache",
            "_ab.", "-x", "x-", "x.", "_",
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?} accepted");
            assert!(!JobId::is_valid(bad), "{bad:?} valid");
        }
        for good in [
            "a",
            "job-1",
            "J.O_B-9",
            "01jds2k3...x",
            "not-a-job",
            &"a".repeat(63),
        ] {
            assert!(JobId::parse(good).is_ok(), "{good:?} refused");
        }
        let e = JobId::parse(&"a".repeat(64)).expect_err("64 characters");
        assert!(e.to_string().contains("longer than 63"), "{e}");
    }

    #[test]
    fn generated_ids_are_url_safe_unique_and_long_enough() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("ts");
        let a = JobId::generate(now);
        let b = JobId::generate(now);
        assert_ne!(a, b);
        assert!(a.as_str().len() >= 10);
        assert_eq!(a.as_str(), a.as_str().to_ascii_lowercase());
        assert!(JobId::parse(a.as_str()).is_ok());
        assert!(a.is_generated() && b.is_generated(), "{a} {b}");
    }

    #[test]
    fn only_ulid_shaped_ids_are_generated_ones() {
        for not in [
            "not-a-job",
            ".cache",
            "01aaaaaaaaaaaaaaaaaaaaaaa",   // 25
            "01aaaaaaaaaaaaaaaaaaaaaaaaa", // 27
            "01AAAAAAAAAAAAAAAAAAAAAAAA",  // upper case: never what submit prints
            "01orphan000000000000000000",  // o is not Crockford base32
            "81aaaaaaaaaaaaaaaaaaaaaaaa",  // above the largest ULID
            "01aaaaaaaaaaaaaaaaaaaaaa-a",
        ] {
            assert!(!is_generated_id(not), "{not:?}");
        }
        assert!(is_generated_id("01aaaaaaaaaaaaaaaaaaaaaaaa"));
        assert!(is_generated_id("7zzzzzzzzzzzzzzzzzzzzzzzzz"));
    }

    #[test]
    fn names_follow_the_label_value_rule_and_say_what_they_name() {
        for good in ["acme", "ACME-1", "a", "x.y_z", &"o".repeat(63)] {
            assert_eq!(check_name("organisation", good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            "../../x",
            "ünïcode-org",
            "_",
            "a b",
            "-a",
            "a.",
            &"o".repeat(64),
        ] {
            let e = check_name("organisation", bad).expect_err(bad);
            let msg = e.to_string();
            assert!(msg.starts_with("invalid organisation"), "{msg}");
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains(NAME_RULE), "{msg}");
        }
    }

    #[test]
    fn enums_round_trip_through_strings() {
        for s in Stage::ALL {
            assert_eq!(s.as_str().parse::<Stage>(), Ok(*s));
        }
        for a in AuditAction::ALL {
            assert_eq!(a.as_str().parse::<AuditAction>(), Ok(*a));
        }
        assert!(
            "bogus"
                .parse::<Step>()
                .expect_err("unknown")
                .to_string()
                .contains("soft_kill")
        );
        let e = "explode"
            .parse::<AuditAction>()
            .expect_err("unknown")
            .to_string();
        assert!(
            e.starts_with("unknown audit action \"explode\" (expected one of: warn, "),
            "{e}"
        );
        assert_eq!(type_words("ArtifactKind"), "artifact kind");
    }

    #[test]
    fn timestamps_format_with_millis() {
        let ts = chrono::DateTime::from_timestamp_millis(1_800_000_000_123).expect("ts");
        assert_eq!(fmt_ts(ts), "2027-01-15T08:00:00.123Z");
    }
}
