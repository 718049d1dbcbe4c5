//! events.k8s.io/v1 Events on Jobs: every field the API server requires, and names that
//! never collide.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use crate::model::{AuditAction, Timestamp};

use crate::kubernetes::{REPORTING_CONTROLLER, to_jiff};

/// The Event's `action` for an audit action.
pub fn action_name(a: AuditAction) -> &'static str {
    match a {
        AuditAction::Warn => "Warn",
        AuditAction::SoftKill => "SoftKill",
        AuditAction::HardKill => "HardKill",
        AuditAction::ForceDelete => "ForceDelete",
        AuditAction::TtlCleanup => "TTLDelete",
        AuditAction::OrphanCleanup => "OrphanCleanup",
        AuditAction::Recover => "Recover",
        AuditAction::MarkFailed => "MarkFailed",
        AuditAction::Cancel => "Cancel",
        AuditAction::ConfigWarning => "Check",
        AuditAction::Hook => "Hook",
        AuditAction::AdmissionDenied => "AdmissionDenied",
    }
}

/// A unique Event name for the Job: `<job>.<time in µs, hex><64 random bits, hex>`, as
/// client-go's recorder names them. Two Events in one pass share their time, and a name
/// derived from the object and the time alone collides (the API server refuses the second
/// with 409 AlreadyExists and it is lost). At most 63 + 1 + 14 + 16 characters: a valid name.
pub fn event_name(job_name: &str, now: Timestamp) -> String {
    format!(
        "{job_name}.{:x}{:016x}",
        now.timestamp_micros(),
        rand::random::<u64>()
    )
}

/// POSTs `ev` (an Event on the Job `job_name`) through `api`. AlreadyExists means the name
/// was taken (names are unique per namespace, and a second Event under one name is refused,
/// not merged): once more, renamed ([`event_name`] at `now`); `ev` keeps the name it was
/// last sent under.
pub async fn create_event(
    api: &kube::Api<Event>,
    ev: &mut Event,
    job_name: &str,
    now: Timestamp,
) -> super::calls::CallResult {
    use super::calls::CallResult;
    let params = kube::api::PostParams::default();
    let result = CallResult::from(api.create(&params, ev).await);
    if !matches!(result, CallResult::Conflict(_)) {
        return result;
    }
    ev.metadata.name = Some(event_name(job_name, now));
    CallResult::from(api.create(&params, ev).await)
}

/// An events.k8s.io/v1 Event on a Job: every field the API server requires (KUBERNETES.md
/// §5), a unique name ([`event_name`]), `eventTime` with microseconds, `note` cut to 1024 bytes.
#[allow(clippy::too_many_arguments)]
pub fn event_for(
    namespace: &str,
    job_name: &str,
    job_uid: &str,
    reason: &str,
    action: &str,
    note: &str,
    reporting_instance: &str,
    now: Timestamp,
) -> Event {
    let micros = now.timestamp_micros();
    let mut note = note.to_owned();
    if note.len() > 1024 {
        let mut cut = 1021;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    // Truncated to whole microseconds, as eventTime must be.
    let at = chrono::DateTime::from_timestamp_micros(micros).unwrap_or(now);
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(job_name, now)),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(to_jiff(at))),
        reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
        reporting_instance: Some(reporting_instance.to_owned()),
        action: Some(action.to_owned()),
        reason: Some(reason.to_owned()),
        type_: Some("Warning".to_owned()),
        note: Some(note),
        regarding: Some(ObjectReference {
            api_version: Some("batch/v1".to_owned()),
            kind: Some("Job".to_owned()),
            name: Some(job_name.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid: Some(job_uid.to_owned()),
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_every_required_field_with_microseconds() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 123_456_789).expect("ts");
        let ev = event_for(
            "ns",
            "build-42",
            "uid-1",
            "TimeoutWarning",
            "Warn",
            &"x".repeat(2000),
            "jobwarden-0",
            now,
        );
        let v = serde_json::to_value(&ev).expect("json");
        assert_eq!(v["eventTime"], "2027-01-15T08:00:00.123456Z");
        for k in [
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
            "type",
            "note",
        ] {
            assert!(v[k].is_string(), "{k} missing: {v}");
        }
        assert_eq!(v["regarding"]["uid"], "uid-1");
        assert_eq!(v["note"].as_str().map(str::len), Some(1024));
        assert!(
            v["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("build-42."))
        );
    }

    #[test]
    fn two_events_at_the_same_instant_get_different_valid_names() {
        let now: Timestamp = "2027-01-15T08:00:00.123456789Z".parse().expect("ts");
        let long = "j".repeat(63);
        let a = event_name(&long, now);
        let b = event_name(&long, now);
        assert_ne!(
            a, b,
            "the second Event would be refused with 409 AlreadyExists"
        );
        for n in [&a, &b] {
            assert!(n.len() <= 253, "{n}");
            assert!(
                n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.'),
                "{n}"
            );
        }
    }
}
