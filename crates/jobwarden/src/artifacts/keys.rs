//! Object keys: where each kind of artifact of a job lives, and which job a listed key belongs to.
//!
//! Layout below the store's base prefix:
//!
//! | kind        | prefix (everything strictly below it belongs to the job) |
//! |-------------|-----------------------------------------------------------|
//! | `artifacts` | `jobs/<org>/<job-id>/…` (written by the job itself)      |
//! | `partial`   | `partial/<job-id>/…` (`artifacts.tar.gz`, by jobwarden-init) |
//! | `logs`      | `logs/<job-id>/…`                                         |
//!
//! A job without an organisation uses the placeholder segment [`NO_ORG`] (`_`) for `<org>`;
//! an organisation literally named `_` is therefore refused.
//!
//! Keys are built only from validated ids: a job id or organisation must follow the one naming
//! rule ([`crate::model::NAME_RULE`]: 1–63 of `[A-Za-z0-9._-]`, a letter or digit at both ends,
//! see [`JobId`]), so nothing can escape its prefix (`..`, `/`, control characters, leading dots
//! are refused). Parsing is equally strict: a listed key that does
//! not have exactly this shape, with a valid id and at least one segment below the job's prefix,
//! is *unrecognised*. Unrecognised keys are never attributed to a job and never deleted.
//!
//! Pure functions; no I/O.

use std::fmt;
use std::str::FromStr;

use object_store::path::Path;
// `string_enum!` expands to code naming these.
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use crate::model::{JobId, string_enum};

/// The `<org>` segment of a job that has no organisation.
pub const NO_ORG: &str = "_";

string_enum! {
    /// A type of artifact, with its own retention (`[retention.artifacts]` uses these names).
    pub enum ArtifactKind {
        /// Final artifacts, `jobs/<org>/<job-id>/…`.
        Artifacts => "artifacts",
        /// Work saved on termination, `partial/<job-id>/…`.
        Partial => "partial",
        /// Logs, `logs/<job-id>/…`.
        Logs => "logs",
    }
}

impl ArtifactKind {
    /// The first key segment of this kind (`jobs`, `partial`, `logs`).
    pub fn root(self) -> &'static str {
        match self {
            ArtifactKind::Artifacts => "jobs",
            ArtifactKind::Partial => "partial",
            ArtifactKind::Logs => "logs",
        }
    }

    /// The listing prefix holding every job's objects of this kind.
    pub fn root_path(self) -> Path {
        Path::from(self.root())
    }

    fn from_root(segment: &str) -> Option<Self> {
        ArtifactKind::ALL
            .iter()
            .copied()
            .find(|k| k.root() == segment)
    }
}

/// The prefix holding one job's objects of `kind`: `jobs/<org>/<id>`, `partial/<id>`,
/// `logs/<id>`. `org` is only used for [`ArtifactKind::Artifacts`]; `None` becomes [`NO_ORG`].
///
/// Listing or deleting this prefix covers exactly the keys *below* it (object_store prefixes
/// match whole segments: `logs/job-1` never covers `logs/job-10/…`).
pub fn prefix_for(kind: ArtifactKind, org: Option<&str>, id: &JobId) -> Result<Path> {
    let id = id.as_str();
    let raw = match kind {
        ArtifactKind::Artifacts => {
            let org = match org {
                None => NO_ORG,
                Some(org) => {
                    check_org(org)?;
                    org
                }
            };
            format!("jobs/{org}/{id}")
        }
        ArtifactKind::Partial | ArtifactKind::Logs => format!("{}/{id}", kind.root()),
    };
    // Cannot fail for validated segments; mapped rather than unwrapped all the same.
    Path::parse(&raw).map_err(|_| Error::InvalidId {
        what: "job id",
        input: id.to_owned(),
        problem: "it does not form a valid key",
    })
}

/// Checks an organisation name for use as a key segment: the naming rule
/// ([`crate::model::check_name`]), which also refuses [`NO_ORG`] (`_` does not begin with a
/// letter or digit).
pub fn check_org(org: &str) -> Result<()> {
    crate::model::check_name("organisation", org).map_err(|e| Error::InvalidId {
        what: "organisation",
        input: org.to_owned(),
        problem: e.problem,
    })
}

/// Which job a listed key belongs to, or `None` when the key is unrecognised.
pub fn job_id_from_key(key: &Path) -> Option<(ArtifactKind, JobId)> {
    let parts = split_key(key.as_ref())?;
    let id = JobId::parse(parts.job_id).ok()?;
    Some((parts.kind, id))
}

/// Whether `prefix` is exactly one job's prefix of some kind (`jobs/<org>/<id>`,
/// `partial/<id>`, `logs/<id>` with valid segments): the only prefixes jobwarden deletes below.
pub fn is_job_prefix(prefix: &Path) -> bool {
    let p = prefix.as_ref();
    split_key(&format!("{p}/x")).is_some_and(|parts| parts.prefix.len() == p.len())
}

/// A listed key taken apart, borrowing from the key. Only produced for keys whose id and org
/// are valid and that have at least one segment below the job's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyParts<'a> {
    pub kind: ArtifactKind,
    /// `None` for [`NO_ORG`] (and for kinds without an org segment).
    pub org: Option<&'a str>,
    pub job_id: &'a str,
    /// The job's prefix (`jobs/<org>/<id>`), a prefix of the key.
    pub prefix: &'a str,
}

/// Splits `key` into kind, org, job id and prefix; `None` when it does not have the layout's
/// shape or an id is invalid.
pub(crate) fn split_key(key: &str) -> Option<KeyParts<'_>> {
    let mut segments = key.split('/');
    let kind = ArtifactKind::from_root(segments.next()?)?;
    let mut prefix_len = kind.root().len() + 1;
    let org = match kind {
        ArtifactKind::Artifacts => {
            let org = segments.next()?;
            prefix_len += org.len() + 1;
            if org == NO_ORG {
                None
            } else if valid_id(org) {
                Some(org)
            } else {
                return None;
            }
        }
        ArtifactKind::Partial | ArtifactKind::Logs => None,
    };
    let job_id = segments.next()?;
    prefix_len += job_id.len();
    if !valid_id(job_id) {
        return None;
    }
    // At least one non-empty segment below the job's prefix (object_store paths never have
    // empty segments, but this function also sees raw strings in tests).
    if segments.next().is_none_or(str::is_empty) {
        return None;
    }
    Some(KeyParts {
        kind,
        org,
        job_id,
        prefix: &key[..prefix_len],
    })
}

/// The rules of [`JobId::parse`], without allocating (called once per listed key).
fn valid_id(s: &str) -> bool {
    JobId::is_valid(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> JobId {
        JobId::parse(s).expect("valid id")
    }

    #[test]
    fn prefixes_follow_the_layout() {
        let j = id("job-1");
        let p = |k, o| prefix_for(k, o, &j).expect("prefix").to_string();
        assert_eq!(p(ArtifactKind::Artifacts, Some("acme")), "jobs/acme/job-1");
        assert_eq!(p(ArtifactKind::Artifacts, None), "jobs/_/job-1");
        assert_eq!(p(ArtifactKind::Partial, Some("acme")), "partial/job-1");
        assert_eq!(p(ArtifactKind::Logs, None), "logs/job-1");
    }

    #[test]
    fn orgs_that_would_escape_are_refused() {
        let j = id("job-1");
        for bad in [
            "", ".", "..", "a/b", "../x", "a b", "a\nb", "a\u{7f}", "_", "ä",
        ] {
            let e = prefix_for(ArtifactKind::Artifacts, Some(bad), &j).expect_err(bad);
            assert!(e.to_string().contains("organisation"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn keys_parse_back_to_their_job() {
        let cases = [
            (
                "jobs/acme/job-1/out/report.txt",
                ArtifactKind::Artifacts,
                "job-1",
            ),
            ("jobs/_/J.O_B-9/x", ArtifactKind::Artifacts, "J.O_B-9"),
            (
                "partial/job-1/artifacts.tar.gz",
                ArtifactKind::Partial,
                "job-1",
            ),
            ("logs/job-1/stdout.log", ArtifactKind::Logs, "job-1"),
            ("logs/job-1/a b/ü+%=.log", ArtifactKind::Logs, "job-1"),
        ];
        for (key, kind, job) in cases {
            let path = Path::parse(key).expect("path");
            assert_eq!(job_id_from_key(&path), Some((kind, id(job))), "{key}");
        }
        let parts = split_key("jobs/acme/job-1/x/y").expect("parts");
        assert_eq!(parts.prefix, "jobs/acme/job-1");
        assert_eq!(parts.org, Some("acme"));
        assert_eq!(split_key("jobs/_/j/x").expect("parts").org, None);
    }

    #[test]
    fn odd_keys_are_unrecognised() {
        for key in [
            "",
            "jobs",
            "jobs/acme",
            "jobs/acme/job-1", // the prefix itself, nothing below it
            "logs/job-1",      // idem
            "partial/job-1",   // idem
            "logs/job-1/",     // empty segment below
            "jobs/acme/bad id/x",
            "jobs/bad org/job-1/x",
            "jobs/../job-1/x",
            "logs/../x",
            "logs/./x",
            "logs/%2E%2E/x",
            "logs/ä/x",
            "other/job-1/x",
            "Logs/job-1/x",
            "readme.txt",
        ] {
            assert_eq!(split_key(key), None, "{key:?}");
        }
        let long = format!("logs/{}/x", "a".repeat(64));
        assert_eq!(split_key(&long), None);
        // Names that are not job ids (dot-files, edges that are not letters or digits).
        for key in [
            "logs/.cache/x",
            "partial/_ab./x",
            "jobs/_/-x/y",
            "jobs/.org/j-1/x",
        ] {
            assert_eq!(split_key(key), None, "{key:?}");
        }
    }

    #[test]
    fn only_whole_job_prefixes_are_job_prefixes() {
        for good in ["jobs/acme/j-1", "jobs/_/j-1", "partial/j-1", "logs/j.1"] {
            assert!(is_job_prefix(&Path::from(good)), "{good}");
        }
        for bad in [
            "",
            "jobs",
            "jobs/acme",
            "logs",
            "partial",
            "jobs/acme/j-1/sub",
            "logs/j-1/x",
            "other/j-1",
            "jobs/ä/j",
            "logs/a b",
        ] {
            let p = Path::parse(bad).expect("path");
            assert!(!is_job_prefix(&p), "{bad:?}");
        }
    }

    #[test]
    fn kinds_use_the_retention_names() {
        let names: Vec<_> = ArtifactKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, ["artifacts", "partial", "logs"]);
        assert_eq!("partial".parse::<ArtifactKind>(), Ok(ArtifactKind::Partial));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("JOBWARDEN_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]
        /// A key built for a job parses back to that job, and no key of another job lies below
        /// its prefix.
        #[test]
        fn prefix_round_trips(
            kind in prop::sample::select(ArtifactKind::ALL),
            org in proptest::option::of("[A-Za-z0-9]([A-Za-z0-9._-]{0,10}[A-Za-z0-9])?"),
            job in "[A-Za-z0-9]([A-Za-z0-9._-]{0,18}[A-Za-z0-9])?",
            rest in "[^/\\x00-\\x1f\\x7f]{1,10}",
        ) {
            prop_assume!(rest != "." && rest != "..");
            let j = id(&job);
            let prefix = prefix_for(kind, org.as_deref(), &j).expect("prefix");
            let key = Path::parse(format!("{prefix}/{rest}")).expect("key");
            prop_assert_eq!(job_id_from_key(&key), Some((kind, j.clone())));
            let parts = split_key(key.as_ref()).expect("parts");
            prop_assert_eq!(parts.prefix, prefix.as_ref());
        }

        /// Whatever a listed key's id segment is, it is attributed to a job exactly when it is a
        /// label value (the oracle, written out: `[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?`).
        #[test]
        fn only_ids_that_are_label_values_are_attributed(
            id in prop_oneof!["\\PC{0,70}", "[A-Za-z0-9._-]{1,70}", "[._-][a-z0-9]{0,4}", "[a-z0-9]{0,4}[._-]"],
            kind in prop::sample::select(ArtifactKind::ALL),
        ) {
            // A '/' makes another key shape (a shorter id with more segments below it).
            prop_assume!(!id.contains('/'));
            let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
            let label_value = (1..=63).contains(&id.len())
                && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && alnum(id.chars().next())
                && alnum(id.chars().last());
            let key = match kind {
                ArtifactKind::Artifacts => format!("jobs/_/{id}/x"),
                _ => format!("{}/{id}/x", kind.root()),
            };
            prop_assert_eq!(split_key(&key).is_some(), label_value, "{:?}", key);
            let org_key = format!("jobs/{id}/j-1/x");
            prop_assert_eq!(split_key(&org_key).is_some(), label_value || id == NO_ORG, "{:?}", org_key);
        }

        #[test]
        fn splitting_never_panics(key in "\\PC{0,60}") {
            if let Some(parts) = split_key(&key) {
                prop_assert!(key.starts_with(parts.prefix));
                prop_assert!(JobId::parse(parts.job_id).is_ok());
            }
        }
    }
}
