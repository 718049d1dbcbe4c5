//! The validated job id.
//!
//! The id ends up in a git ref (`refs/heads/flowforge-wip-<id>`), an object-store key
//! (`partial/<id>/artifacts.tar.gz`) and a commit message, so it is checked once, before the
//! child starts, and only a `JobId` is accepted where those are built.

use std::fmt;

/// A job id matching `[A-Za-z0-9._-]{1,128}` that is not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobId(String);

impl JobId {
    /// Checks `value`; on failure returns a short reason.
    pub fn parse(value: &str) -> Result<JobId, &'static str> {
        if value.is_empty() {
            return Err("it is empty");
        }
        if value.len() > 128 {
            return Err("it is longer than 128 characters");
        }
        if value == "." || value == ".." {
            return Err("it is a path component");
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err("it contains a character outside A-Z a-z 0-9 . _ -");
        }
        Ok(JobId(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The branch the WIP commit is pushed to.
    ///
    /// The id alphabet admits a few ids that git refuses as a ref name (`git check-ref-format`:
    /// no `..`, no trailing `.`, no `.lock` suffix); for those the WIP save reports this error
    /// rather than handing git a name it will reject.
    pub fn wip_ref(&self) -> Result<String, String> {
        let id = &self.0;
        if id.contains("..") || id.ends_with('.') || id.ends_with(".lock") {
            return Err(format!(
                "job id {id:?} cannot be part of a git branch name (it contains \"..\" or ends \
                 with \".\" or \".lock\"), so no WIP branch can be pushed"
            ));
        }
        Ok(format!("refs/heads/flowforge-wip-{id}"))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in [
            "a",
            "job-42",
            "A.b_c-D.9",
            "...",
            ".hidden",
            "x..y",
            &"z".repeat(128),
        ] {
            assert_eq!(JobId::parse(ok).map(|id| id.0), Ok(ok.to_owned()), "{ok:?}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../etc",
            "a b",
            "a:b",
            "a~1",
            "a^",
            "héllo",
            "x\n",
            "refs/heads/x",
            &"z".repeat(129),
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn builds_the_wip_ref_from_the_id() {
        let id = JobId::parse("job-7").expect("valid id");
        assert_eq!(
            id.wip_ref().as_deref(),
            Ok("refs/heads/flowforge-wip-job-7")
        );
    }

    #[test]
    fn refuses_ids_git_cannot_name_a_branch_after() {
        for id in ["x..y", "a.", "a.lock", "..."] {
            let id = JobId::parse(id).expect("valid job id");
            assert!(id.wip_ref().is_err(), "{id} gave a ref");
        }
    }
}
