//! What the admission webhook answers, decided from the in-memory policy alone. Pure: no I/O,
//! no clock (`now` is an argument, for the generated job id and the audit row).
//!
//! Both webhooks read a Job (or a CronJob's `jobTemplate`) the way the controller does
//! ([`job_settings`]: annotations, labels, `activeDeadlineSeconds`) and resolve it with the one
//! [`resolve`]: the mutating webhook writes down what the controller will enforce; the
//! validating webhook judges what the Job asked for.
//!
//! **Mutate** (`CREATE` of a batch/v1 Job or CronJob in a watched, unprotected namespace) only
//! adds what is missing, and lowers one thing:
//! - the job-id label when the Job has none (a fresh lowercase ULID: a valid label value,
//!   unique), and on the pod template when it lacks it, so the controller may touch its pods.
//!   Not on a CronJob's `jobTemplate`: each Job it creates passes through here and gets its own;
//! - `<prefix>timeout-seconds` and `<prefix>grace-period-seconds` when missing: the resolved
//!   values, which the controller reads back as the Job's own (so its ladder acts at the same
//!   timeout), and `<prefix>timeout-source` / `<prefix>grace-source` when missing (the keys and
//!   values of `manifest job`: [`policy_annotations`]);
//! - `spec.activeDeadlineSeconds` = timeout + 2 × grace, a backstop at the force delete, when
//!   missing or larger; never raised;
//! - `spec.ttlSecondsAfterFinished` when missing: [`backstop_ttl`], after jobwarden's TTL.
//!
//! It never changes what the validating webhook judges (which runs after it, on the mutated
//! object): a Job whose requested timeout exceeds a maximum, or whose timeout annotation is
//! malformed, keeps its timeout annotation and `activeDeadlineSeconds` as they are; malformed
//! annotations are never rewritten.
//!
//! **Validate** finds the [`Violation`]s: each malformed setting ([`SettingWarning`]: a
//! duration, an organisation or job-type name) and a requested timeout — the Job's own, as
//! [`resolve`] takes it: the smaller of the annotation and `activeDeadlineSeconds` — above the
//! organisation's maximum or `hard_max`. `enforce` denies (one message naming the object, the
//! organisation, each key, value and limit); `warn` admits with one warning each.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{Config, PolicyConfig, RetentionConfig};
use crate::duration::format_duration;
use crate::model::{AuditAction, AuditEntry, JobId, Timestamp, name_problem};
use crate::policy::{Cap, JobSettings, Resolved, SettingWarning, TimeoutSource, resolve};

use super::super::manifest::{backstop_ttl, policy_annotations};
use super::super::observe::{Scope, job_settings};
use super::config::Mode;
use super::review::{AdmissionRequest, Answer, PatchOp, ReviewError, escape};

/// `initiated_by` of the audit rows admission writes.
pub const INITIATED_BY: &str = "admission";

/// The policy the webhooks decide with, built once from the config.
#[derive(Debug, Clone)]
pub struct Admission {
    scope: Scope,
    policy: PolicyConfig,
    retention: RetentionConfig,
    mode: Mode,
}

/// The two kinds admission handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// batch/v1 Job.
    Job,
    /// batch/v1 CronJob: its `spec.jobTemplate`.
    CronJob,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Job => "Job",
            Kind::CronJob => "CronJob",
        }
    }

    /// The JSON Pointer of the Job's metadata and spec within the object.
    fn paths(self) -> (&'static str, &'static str) {
        match self {
            Kind::Job => ("/metadata", "/spec"),
            Kind::CronJob => ("/spec/jobTemplate/metadata", "/spec/jobTemplate/spec"),
        }
    }

    /// `activeDeadlineSeconds` as a dotted key, for messages.
    fn deadline_key(self) -> &'static str {
        match self {
            Kind::Job => "spec.activeDeadlineSeconds",
            Kind::CronJob => "spec.jobTemplate.spec.activeDeadlineSeconds",
        }
    }

    /// The resource type of an audit row.
    fn resource_type(self) -> &'static str {
        match self {
            Kind::Job => "job",
            Kind::CronJob => "cronjob",
        }
    }
}

/// Why a Job is denied (`enforce`) or warned about (`warn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A malformed annotation (or org/type label), as the controller would ignore it.
    Malformed(SettingWarning),
    /// The Job's own timeout exceeds a maximum.
    OverMax {
        /// The annotation key or `spec.activeDeadlineSeconds`.
        key: String,
        /// The value as given.
        value: String,
        /// The requested timeout.
        requested: Duration,
        /// The maximum it exceeds.
        limit: Duration,
        /// Which maximum.
        cap: Cap,
        /// The organisation (for `organization_max`).
        org: Option<String>,
    },
}

/// A value for a message: quoted, cut to 100 characters.
fn quoted(value: &str) -> String {
    let mut cut: String = value.chars().take(100).collect();
    if cut.len() < value.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

impl Violation {
    /// The violation in words, without the object (it prefixes them).
    pub fn describe(&self, mode: Mode) -> String {
        match self {
            Violation::Malformed(w) => {
                let mut s = format!("{}={} is malformed: {}", w.key, quoted(&w.value), w.problem);
                if mode != Mode::Enforce {
                    s.push_str(&format!("; jobwarden uses {}", w.fallback));
                }
                s
            }
            Violation::OverMax {
                key,
                value,
                requested,
                limit,
                cap,
                org,
            } => {
                let (what, config_key) = match (cap, org) {
                    (Cap::OrganizationMax, Some(o)) => (
                        format!("organisation {o}'s maximum timeout"),
                        format!("policy.organization_max.{o}"),
                    ),
                    _ => (
                        "the platform's maximum timeout".to_owned(),
                        "policy.hard_max".to_owned(),
                    ),
                };
                let mut s = format!(
                    "{key}={} ({}) exceeds {what} of {} ({config_key})",
                    quoted(value),
                    format_duration(*requested),
                    format_duration(*limit)
                );
                if mode != Mode::Enforce {
                    s.push_str(&format!(
                        "; jobwarden ends it after {}",
                        format_duration(*limit)
                    ));
                }
                s
            }
        }
    }

    /// Facts for the audit row's details.
    fn details(&self) -> Value {
        match self {
            Violation::Malformed(w) => json!({
                "key": w.key, "value": w.value, "problem": w.problem,
            }),
            Violation::OverMax {
                key,
                value,
                requested,
                limit,
                cap,
                org,
            } => json!({
                "key": key, "value": value, "requested_seconds": requested.as_secs(),
                "limit_seconds": limit.as_secs(), "limit": cap, "org": org,
            }),
        }
    }
}

/// What the validating webhook decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The AdmissionReview answer.
    pub answer: Answer,
    /// The denial's audit row (`enforce`, violations found), or the one a dry-run jobwarden
    /// would have written (see [`Verdict::admitted_in_dry_run`]).
    pub audit: Option<AuditEntry>,
}

impl Verdict {
    /// jobwarden runs with `--dry-run`: admit whatever the verdict, and mark its audit row
    /// dry-run (a dry-run jobwarden changes nothing in the cluster).
    pub fn admitted_in_dry_run(mut self) -> Verdict {
        if let Some(row) = self.audit.as_mut() {
            row.dry_run = true;
        }
        self.answer = Answer::allow();
        self
    }
}

/// The part of an ObjectMeta admission reads. Lenient: missing or null is `None`, unknown
/// fields are ignored; only the fields read must have their type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct TemplateIn {
    metadata: Option<Meta>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JobSpecIn {
    active_deadline_seconds: Option<i64>,
    ttl_seconds_after_finished: Option<i32>,
    template: Option<TemplateIn>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JobIn {
    metadata: Option<Meta>,
    spec: Option<JobSpecIn>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct CronJobSpecIn {
    job_template: Option<JobIn>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct CronJobIn {
    metadata: Option<Meta>,
    spec: Option<CronJobSpecIn>,
}

/// One in-scope request, read: the object and the Job(-template) in it, resolved.
struct Reviewed {
    kind: Kind,
    /// `Job flowforge/build-7`.
    object: String,
    namespace: String,
    /// The object's name (`prefix…` with `generateName`).
    name: String,
    /// The Job's metadata (the object's, or the CronJob's `jobTemplate.metadata`).
    meta: Option<Meta>,
    /// The Job's spec (the object's, or the `jobTemplate.spec`).
    spec: Option<JobSpecIn>,
    settings: JobSettings,
    resolved: Resolved,
    violations: Vec<Violation>,
    /// The timeout annotation or `activeDeadlineSeconds` is judged (a violation): mutate
    /// leaves both alone.
    timeout_judged: bool,
}

fn parse_object<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, ReviewError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        ReviewError::Object(format!("{path}: {}", e.into_inner()))
    })
}

impl Admission {
    /// From the config (`[kubernetes]` scope, `[policy]`, `[retention]`, `[admission] mode`,
    /// the annotation prefix).
    pub fn new(config: &Config) -> Self {
        Admission {
            scope: Scope::new(&config.kubernetes, &config.annotations.prefix),
            policy: config.policy.clone(),
            retention: config.retention.clone(),
            mode: config.admission.mode,
        }
    }

    /// `[admission] mode`.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Reads `req` if admission concerns it: a CREATE of a batch/v1 Job or CronJob in a
    /// namespace that is watched and not protected. `Ok(None)`: not ours, admitted unchanged.
    fn review(&self, req: &AdmissionRequest) -> Result<Option<Reviewed>, ReviewError> {
        let k = &req.kind;
        let kind = match (k.group.as_str(), k.version.as_str(), k.kind.as_str()) {
            ("batch", "v1", "Job") => Kind::Job,
            ("batch", "v1", "CronJob") => Kind::CronJob,
            _ => return Ok(None),
        };
        if req.operation != "CREATE" {
            return Ok(None);
        }
        let object = req.object.as_ref().ok_or_else(|| ReviewError::NoObject {
            operation: req.operation.clone(),
        })?;
        if !object.is_object() {
            return Err(ReviewError::Object("not a JSON object".into()));
        }
        let (object_meta, meta, spec) = match kind {
            Kind::Job => {
                let job: JobIn = parse_object(object)?;
                let meta = job.metadata.clone();
                (job.metadata.unwrap_or_default(), meta, job.spec)
            }
            Kind::CronJob => {
                let cron: CronJobIn = parse_object(object)?;
                // No jobTemplate: nothing to give a policy to (the API server refuses such a
                // CronJob itself), and no path a patch could add to.
                let Some(template) = cron.spec.and_then(|s| s.job_template) else {
                    return Ok(None);
                };
                (
                    cron.metadata.unwrap_or_default(),
                    template.metadata,
                    template.spec,
                )
            }
        };
        let namespace = req
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| object_meta.namespace.clone())
            .unwrap_or_default();
        // Never a protected or unwatched namespace's object (nor one without a namespace).
        if namespace.is_empty() || !self.scope.namespace_allowed(&namespace) {
            return Ok(None);
        }
        let name = req
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| object_meta.name.clone().filter(|n| !n.is_empty()))
            .or_else(|| object_meta.generate_name.as_ref().map(|g| format!("{g}…")))
            .unwrap_or_else(|| "(unnamed)".to_owned());
        let object_name = format!("{} {namespace}/{name}", kind.as_str());
        let empty = BTreeMap::new();
        let m = meta.as_ref();
        let (settings, warnings) = job_settings(
            &object_name,
            m.and_then(|m| m.annotations.as_ref()).unwrap_or(&empty),
            m.and_then(|m| m.labels.as_ref()).unwrap_or(&empty),
            spec.as_ref().and_then(|s| s.active_deadline_seconds),
            &self.scope.keys,
        );
        let resolved = resolve(&settings, &self.policy);
        let mut timeout_judged = warnings.iter().any(|w| w.key == self.scope.keys.timeout);
        let mut violations: Vec<Violation> =
            warnings.into_iter().map(Violation::Malformed).collect();
        if resolved.source == TimeoutSource::Job
            && let Some(cap) = resolved.capped_by
        {
            // The Job's own request, as `resolve` took it: the smaller of the two.
            let annotation = settings.timeout;
            let deadline = settings.active_deadline;
            let by_annotation = match (annotation, deadline) {
                (Some(a), Some(d)) => a <= d,
                (a, _) => a.is_some(),
            };
            let (key, value, requested) = if by_annotation {
                let key = self.scope.keys.timeout.clone();
                let value = m
                    .and_then(|m| m.annotations.as_ref())
                    .and_then(|a| a.get(&key))
                    .cloned()
                    .unwrap_or_default();
                (key, value, annotation.unwrap_or_default())
            } else {
                let d = deadline.unwrap_or_default();
                (kind.deadline_key().to_owned(), d.as_secs().to_string(), d)
            };
            timeout_judged = true;
            violations.push(Violation::OverMax {
                key,
                value,
                requested,
                limit: resolved.timeout,
                cap,
                org: settings.org.clone(),
            });
        }
        Ok(Some(Reviewed {
            kind,
            object: object_name,
            namespace,
            name,
            meta,
            spec,
            settings,
            resolved,
            violations,
            timeout_judged,
        }))
    }

    /// The mutating webhook's answer: admitted, with the patch that gives the Job its policy
    /// (see the module documentation). Nothing for objects admission does not concern.
    pub fn mutate(&self, req: &AdmissionRequest, now: Timestamp) -> Result<Answer, ReviewError> {
        let Some(r) = self.review(req)? else {
            return Ok(Answer::allow());
        };
        let (meta_path, spec_path) = r.kind.paths();
        let mut ops = Vec::new();
        let meta = r.meta.clone().unwrap_or_default();
        let mut meta_exists = r.meta.is_some();
        let empty = BTreeMap::new();
        let labels = meta.labels.as_ref().unwrap_or(&empty);
        let label_key = &self.scope.job_id_label;

        // The job id: the Job's own, or a fresh one; on the pod template too.
        let job_id = match r.kind {
            Kind::CronJob => None,
            Kind::Job => match labels.get(label_key) {
                Some(id) => JobId::parse(id).ok(),
                None => {
                    let id = JobId::generate(now);
                    add_entries(
                        &mut ops,
                        meta_path,
                        &mut meta_exists,
                        "labels",
                        meta.labels.as_ref(),
                        vec![(label_key.clone(), id.to_string())],
                    );
                    Some(id)
                }
            },
        };
        let keys = &self.scope.keys;
        let annotations = meta.annotations.as_ref().unwrap_or(&empty);
        let mut wanted: Vec<(String, String)> = policy_annotations(&r.resolved, keys)
            .into_iter()
            .filter(|(k, _)| !(r.timeout_judged && *k == keys.timeout))
            .filter(|(k, _)| !annotations.contains_key(k))
            .collect();
        wanted.sort();
        add_entries(
            &mut ops,
            meta_path,
            &mut meta_exists,
            "annotations",
            meta.annotations.as_ref(),
            wanted,
        );
        if let Some(spec) = &r.spec {
            if let (Some(id), Some(template)) = (&job_id, &spec.template) {
                let template_meta = template.metadata.clone().unwrap_or_default();
                let has = template_meta
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(label_key));
                if !has {
                    let mut exists = template.metadata.is_some();
                    add_entries(
                        &mut ops,
                        &format!("{spec_path}/template/metadata"),
                        &mut exists,
                        "labels",
                        template_meta.labels.as_ref(),
                        vec![(label_key.clone(), id.to_string())],
                    );
                }
            }
            if !r.timeout_judged {
                let backstop = secs(r.resolved.timeout)
                    .saturating_add(secs(r.resolved.grace).saturating_mul(2));
                let path = format!("{spec_path}/activeDeadlineSeconds");
                match spec.active_deadline_seconds {
                    None => ops.push(PatchOp::add(path, json!(backstop))),
                    Some(have) if have > backstop => {
                        ops.push(PatchOp::replace(path, json!(backstop)));
                    }
                    Some(_) => {}
                }
            }
            if spec.ttl_seconds_after_finished.is_none() {
                ops.push(PatchOp::add(
                    format!("{spec_path}/ttlSecondsAfterFinished"),
                    json!(backstop_ttl(r.settings.ttl, &self.retention)),
                ));
            }
        }
        Ok(Answer {
            allowed: true,
            patch: ops,
            warnings: Vec::new(),
            denial: None,
        })
    }

    /// The validating webhook's answer, and the audit row of a denial.
    pub fn validate(&self, req: &AdmissionRequest, now: Timestamp) -> Result<Verdict, ReviewError> {
        let Some(r) = self.review(req)? else {
            return Ok(Verdict {
                answer: Answer::allow(),
                audit: None,
            });
        };
        let subject = match &r.settings.org {
            Some(org) => format!("{} (organisation {org})", r.object),
            None => format!("{} (no organisation)", r.object),
        };
        let mut notes = Vec::new();
        let label_key = &self.scope.job_id_label;
        let labels = r.meta.as_ref().and_then(|m| m.labels.as_ref());
        match (r.kind, labels.and_then(|l| l.get(label_key))) {
            (Kind::CronJob, Some(id)) => notes.push(format!(
                "{}: its jobTemplate carries the {label_key} label {}: every Job it creates would share one job id; remove it (each Job gets its own when it is created)",
                r.object,
                quoted(id)
            )),
            (Kind::Job, Some(id)) => {
                if let Some(problem) = name_problem(id) {
                    notes.push(format!(
                        "{}: its {label_key} label {} is not a job id ({problem}): jobwarden's controller will not watch it",
                        r.object,
                        quoted(id)
                    ));
                }
            }
            _ => {}
        }
        if r.violations.is_empty() {
            return Ok(Verdict {
                answer: Answer {
                    allowed: true,
                    warnings: notes,
                    ..Answer::default()
                },
                audit: None,
            });
        }
        let described: Vec<String> = r.violations.iter().map(|v| v.describe(self.mode)).collect();
        if self.mode != Mode::Enforce {
            notes.extend(described.iter().map(|d| format!("{subject}: {d}")));
            return Ok(Verdict {
                answer: Answer {
                    allowed: true,
                    warnings: notes,
                    ..Answer::default()
                },
                audit: None,
            });
        }
        let message = format!("jobwarden: {subject}: {}", described.join("; "));
        let job_id = labels
            .and_then(|l| l.get(label_key))
            .filter(|id| JobId::is_valid(id))
            .cloned()
            .unwrap_or_default();
        let audit = AuditEntry {
            id: 0,
            timestamp: now,
            job_id,
            resource_type: r.kind.resource_type().to_owned(),
            resource_name: format!("{}/{}", r.namespace, r.name),
            action: AuditAction::AdmissionDenied,
            reason: message.clone(),
            initiated_by: INITIATED_BY.to_owned(),
            success: true,
            error_message: None,
            dry_run: false,
            details: Some(json!({
                "uid": req.uid,
                "user": req.user_info.username,
                "org": r.settings.org,
                "violations": r.violations.iter().map(Violation::details).collect::<Vec<_>>(),
            })),
        };
        Ok(Verdict {
            answer: Answer {
                allowed: false,
                patch: Vec::new(),
                warnings: notes,
                denial: Some(message),
            },
            audit: Some(audit),
        })
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Adds `entries` to the string map `field` of the object at `base`: one op per key when the
/// map exists, else one op creating it (and `base` first, when that is missing too).
fn add_entries(
    ops: &mut Vec<PatchOp>,
    base: &str,
    base_exists: &mut bool,
    field: &str,
    existing: Option<&BTreeMap<String, String>>,
    entries: Vec<(String, String)>,
) {
    if entries.is_empty() {
        return;
    }
    if !*base_exists {
        ops.push(PatchOp::add(base, json!({})));
        *base_exists = true;
    }
    match existing {
        Some(_) => {
            for (k, v) in entries {
                ops.push(PatchOp::add(
                    format!("{base}/{field}/{}", escape(&k)),
                    json!(v),
                ));
            }
        }
        None => {
            let map: serde_json::Map<String, Value> = entries
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            ops.push(PatchOp::add(format!("{base}/{field}"), Value::Object(map)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::Dur;
    use proptest::prelude::*;

    fn admission(mode: Mode) -> Admission {
        let mut c = Config::default();
        c.policy
            .organization_max
            .insert("acme".into(), Dur::secs(4 * 3600));
        c.policy
            .job_type_overrides
            .insert("build".into(), Dur::secs(3600));
        c.admission.mode = mode;
        Admission::new(&c)
    }

    fn request(object: Value) -> AdmissionRequest {
        serde_json::from_value(json!({
            "uid": "u", "kind": {"group": "batch", "version": "v1", "kind": "Job"},
            "namespace": "flowforge", "operation": "CREATE", "object": object,
        }))
        .expect("request")
    }

    fn t0() -> Timestamp {
        "2026-11-28T10:00:00Z".parse().expect("ts")
    }

    fn apply(object: &Value, ops: &[PatchOp]) -> Value {
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::to_value(ops).expect("ops")).expect("patch");
        let mut out = object.clone();
        json_patch::patch(&mut out, &patch).expect("the patch applies");
        out
    }

    #[test]
    fn missing_maps_and_metadata_are_created_before_their_keys() {
        let a = admission(Mode::Enforce);
        // No metadata at all (not what an API server sends, but never a failing patch).
        let object = json!({"spec": {"template": {}}});
        let answer = a.mutate(&request(object.clone()), t0()).expect("answer");
        let patched = apply(&object, &answer.patch);
        assert_eq!(answer.patch[0], PatchOp::add("/metadata", json!({})));
        let id = patched["metadata"]["labels"]["job-id"]
            .as_str()
            .expect("id");
        assert!(JobId::parse(id).expect("valid").is_generated());
        assert_eq!(
            patched["metadata"]["annotations"]["flowforge.io/timeout-seconds"],
            "7200"
        );
        assert_eq!(
            patched["spec"]["template"]["metadata"]["labels"]["job-id"],
            id
        );
        assert_eq!(patched["spec"]["activeDeadlineSeconds"], 7200 + 600);
        // No spec: nothing under it.
        let object = json!({"metadata": {"name": "x", "labels": {}}});
        let answer = a.mutate(&request(object.clone()), t0()).expect("answer");
        assert!(
            answer
                .patch
                .iter()
                .all(|op| op.path.starts_with("/metadata/")),
            "{:?}",
            answer.patch
        );
        apply(&object, &answer.patch);
    }

    #[test]
    fn the_validating_verdict_carries_the_audit_row_only_when_denied() {
        let over = json!({"metadata": {"name": "b", "labels": {"job-id": "j-1"},
            "annotations": {"flowforge.io/organization-id": "acme",
                            "flowforge.io/timeout-seconds": "5h"}}, "spec": {}});
        let v = admission(Mode::Enforce)
            .validate(&request(over.clone()), t0())
            .expect("verdict");
        assert!(!v.answer.allowed);
        let row = v.audit.clone().expect("a row");
        assert_eq!(
            (
                row.action,
                row.initiated_by.as_str(),
                row.timestamp,
                row.job_id.as_str()
            ),
            (AuditAction::AdmissionDenied, "admission", t0(), "j-1")
        );
        let dry = v.admitted_in_dry_run();
        assert!(dry.answer.allowed && dry.answer.denial.is_none());
        assert!(dry.audit.expect("still audited").dry_run);
        let v = admission(Mode::Warn)
            .validate(&request(over), t0())
            .expect("verdict");
        assert!(v.answer.allowed && v.audit.is_none());
        assert_eq!(v.answer.warnings.len(), 1);
    }

    #[test]
    fn a_cronjob_without_a_job_template_is_left_to_the_api_server() {
        let a = admission(Mode::Enforce);
        for object in [
            json!({"metadata": {"name": "c"}, "spec": {"schedule": "* * * * *"}}),
            json!({"metadata": {"name": "c"}}),
        ] {
            let mut req = request(object);
            req.kind.kind = "CronJob".into();
            assert_eq!(a.mutate(&req, t0()).expect("answer"), Answer::allow());
            assert_eq!(
                a.validate(&req, t0()).expect("verdict").answer,
                Answer::allow()
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("JOBWARDEN_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(500)
        ))]
        /// Whatever a Job carries, the patch applies, keeps every label and annotation it had
        /// and its TTL, never raises its deadline, and gives it a job id; validate never panics.
        #[test]
        fn mutate_only_adds_and_lowers_the_deadline(
            label in proptest::option::of("[a-zA-Z0-9_.-]{0,70}"),
            timeout in proptest::option::of(prop_oneof![
                (1u64..200_000).prop_map(|s| s.to_string()),
                "\\PC{0,8}",
            ]),
            grace in proptest::option::of("[0-9a-z]{0,6}"),
            org in proptest::option::of(prop_oneof![Just("acme".to_owned()), "[a-z./]{0,6}"]),
            ads in proptest::option::of(-5i64..300_000),
            ttl in proptest::option::of(0i32..1_000_000),
            template_meta in any::<bool>(),
        ) {
            let mut labels = serde_json::Map::new();
            if let Some(l) = &label { labels.insert("job-id".into(), json!(l)); }
            let mut ann = serde_json::Map::new();
            if let Some(t) = &timeout { ann.insert("flowforge.io/timeout-seconds".into(), json!(t)); }
            if let Some(g) = &grace { ann.insert("flowforge.io/grace-period-seconds".into(), json!(g)); }
            if let Some(o) = &org { ann.insert("flowforge.io/organization-id".into(), json!(o)); }
            let mut spec = json!({"template": {}});
            if template_meta { spec["template"]["metadata"] = json!({"labels": {"app": "x"}}); }
            if let Some(d) = ads { spec["activeDeadlineSeconds"] = json!(d); }
            if let Some(t) = ttl { spec["ttlSecondsAfterFinished"] = json!(t); }
            let object = json!({"metadata": {"name": "j", "labels": labels, "annotations": ann}, "spec": spec});
            for mode in [Mode::Enforce, Mode::Warn] {
                let a = admission(mode);
                let answer = a.mutate(&request(object.clone()), t0()).expect("answer");
                prop_assert!(answer.allowed);
                let patched = apply(&object, &answer.patch);
                for (k, v) in &labels {
                    prop_assert_eq!(&patched["metadata"]["labels"][k], v);
                }
                for (k, v) in &ann {
                    prop_assert_eq!(&patched["metadata"]["annotations"][k], v);
                }
                prop_assert!(patched["metadata"]["labels"]["job-id"].is_string());
                if let Some(t) = ttl {
                    prop_assert_eq!(&patched["spec"]["ttlSecondsAfterFinished"], &json!(t));
                }
                if let Some(d) = ads {
                    let now = patched["spec"]["activeDeadlineSeconds"].as_i64();
                    prop_assert!(now.is_some_and(|n| n <= d), "raised {} to {:?}", d, now);
                }
                a.validate(&request(patched), t0()).expect("verdict");
            }
        }
    }
}
