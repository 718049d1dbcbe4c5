//! Submitting a job: the body every runtime takes at `POST /v1/jobs` ([`SubmitRequest`]),
//! parsed so that every error names the field ([`parse_body`]), and the rules it must follow
//! beyond its types ([`validate_submit`]), the same for the HTTP API and for `jobwarden
//! submit` before it sends anything.

use crate::api_types::SubmitRequest;

/// A body that is not the JSON a route takes: which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON, or not an object of the route's shape as a whole.
    #[error("invalid request body: {0}")]
    Invalid(String),
    /// One field is wrong (unknown, wrong type, bad value).
    #[error("field `{field}`: {problem}")]
    Field {
        /// The field's path (`timeout`, `command[0]`).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl From<BodyError> for String {
    fn from(e: BodyError) -> String {
        e.to_string()
    }
}

/// Parses a JSON body, naming the offending field in the error.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            BodyError::Invalid(inner)
        } else {
            BodyError::Field {
                field: path,
                problem: inner,
            }
        }
    })
}

/// A submit request that breaks a rule beyond its types: which field, and what is wrong.
/// The API answers 400 naming the field and the problem; `jobwarden submit` names the flag
/// ([`SubmitError::flag`]) and exits 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct SubmitError {
    /// The body's field (`org`, `timeout`, `command[0]`, …).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl SubmitError {
    /// `field` is wrong: `problem`.
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        SubmitError {
            field,
            problem: problem.into(),
        }
    }

    /// The `jobwarden submit` flag the field comes from (`--org`, `--type`, …; the command
    /// after `--`).
    pub fn flag(&self) -> &'static str {
        match self.field {
            "org" => "--org",
            "type" => "--type",
            "name" => "--name",
            "timeout" => "--timeout",
            "grace" => "--grace",
            "ttl" => "--ttl",
            "heartbeat_timeout" => "--heartbeat-timeout",
            "image" => "--image",
            "namespace" => "--namespace",
            _ => "the command after `--`",
        }
    }
}

/// Validates a submit request beyond its types: one rule for every way a job arrives (the
/// HTTP API, `jobwarden submit` before it sends anything).
pub fn validate_submit(req: &SubmitRequest) -> Result<(), SubmitError> {
    if req.command.is_empty() {
        return Err(SubmitError::new(
            "command",
            "must name a program (a non-empty array of strings)",
        ));
    }
    if req.command[0].is_empty() {
        return Err(SubmitError::new(
            "command[0]",
            "the program must not be empty",
        ));
    }
    if req.command.iter().any(|a| a.contains('\0')) {
        return Err(SubmitError::new(
            "command",
            "arguments must not contain NUL bytes",
        ));
    }
    if let Some(t) = req.timeout
        && t.0.is_zero()
    {
        return Err(SubmitError::new("timeout", "must be greater than 0"));
    }
    if let Some(v) = &req.name
        && (v.is_empty() || v.len() > 253 || v.chars().any(char::is_control))
    {
        return Err(SubmitError::new(
            "name",
            "must be 1–253 characters without control characters",
        ));
    }
    // Organisations and job types are key segments, label values and config keys: one rule.
    for (field, what, v) in [
        ("org", "organisation", &req.org),
        ("type", "job type", &req.job_type),
    ] {
        if let Some(v) = v
            && let Err(e) = crate::model::check_name(what, v)
        {
            return Err(SubmitError::new(field, e.to_string()));
        }
    }
    if let Some(h) = req.heartbeat_timeout
        && h.0.is_zero()
    {
        return Err(SubmitError::new(
            "heartbeat_timeout",
            "must be greater than 0",
        ));
    }
    if let Some(image) = &req.image
        && (image.trim().is_empty() || image.chars().any(char::is_whitespace))
    {
        return Err(SubmitError::new(
            "image",
            "must be an image reference without spaces",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_name_the_field() {
        let e = parse_body::<SubmitRequest>(br#"{"command":["x"],"timout":"1h"}"#)
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("timout"), "{e}");
        let e = parse_body::<SubmitRequest>(br#"{"command":"x"}"#)
            .expect_err("type")
            .to_string();
        assert!(e.contains("`command`"), "{e}");
        let e = parse_body::<SubmitRequest>(br#"{"command":["x"],"timeout":"2x"}"#)
            .expect_err("dur")
            .to_string();
        assert!(e.contains("`timeout`") && e.contains("2x"), "{e}");
        let e = parse_body::<SubmitRequest>(br#"{"command":["x"],"grace":-1}"#)
            .expect_err("neg")
            .to_string();
        assert!(e.contains("`grace`"), "{e}");
        let e = parse_body::<SubmitRequest>(b"not json")
            .expect_err("syntax")
            .to_string();
        assert!(e.contains("invalid request body"), "{e}");
        let ok: SubmitRequest =
            parse_body(br#"{"command":["sleep","1"],"timeout":30,"ttl":"1h"}"#).expect("ok");
        assert_eq!(ok.timeout.map(|d| d.as_secs()), Some(30));
        assert!(validate_submit(&ok).is_ok());
        let empty: SubmitRequest = parse_body(br#"{"command":[]}"#).expect("parses");
        assert!(
            validate_submit(&empty)
                .expect_err("empty")
                .to_string()
                .contains("`command`")
        );
        let zero: SubmitRequest =
            parse_body(br#"{"command":["x"],"timeout":"0s"}"#).expect("parses");
        let e = validate_submit(&zero).expect_err("zero");
        assert_eq!((e.field, e.flag()), ("timeout", "--timeout"));
        assert!(e.to_string().contains("`timeout`"), "{e}");
    }

    #[test]
    fn org_and_type_follow_the_naming_rule() {
        for (body, field, flag) in [
            (r#"{"command":["x"],"org":"../../x"}"#, "org", "--org"),
            (r#"{"command":["x"],"org":"ünïcode-org"}"#, "org", "--org"),
            (r#"{"command":["x"],"org":"_"}"#, "org", "--org"),
            (r#"{"command":["x"],"type":".hidden"}"#, "type", "--type"),
        ] {
            let req: SubmitRequest = parse_body(body.as_bytes()).expect("parses");
            let e = validate_submit(&req).expect_err(body);
            assert_eq!((e.field, e.flag()), (field, flag), "{body}");
            assert!(
                e.to_string()
                    .starts_with(&format!("field `{field}`: invalid ")),
                "{e}"
            );
        }
        let ok: SubmitRequest =
            parse_body(br#"{"command":["x"],"org":"acme-1","type":"build.fast"}"#).expect("ok");
        assert_eq!(validate_submit(&ok), Ok(()));
    }
}
