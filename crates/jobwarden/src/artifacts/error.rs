//! The one error type of the artifacts layer.
//!
//! Every message names where the problem is: the store (`s3://bucket/prefix at <endpoint>` or
//! `file:///dir`), the key or prefix, and for configuration the key (`artifacts.url: …`).

use super::config::ConfigError;
use super::delete::DeleteReport;

/// Errors of the artifacts layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `[artifacts]` configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),

    /// The store could not be set up from a valid configuration (for example the local
    /// directory cannot be created).
    #[error("cannot open artifact store {location}: {problem}")]
    Open {
        /// The store (`file:///dir`, `s3://bucket/prefix at <endpoint>`).
        location: String,
        /// What went wrong.
        problem: String,
    },

    /// The startup / readiness probe failed: the bucket or directory cannot be listed.
    #[error(
        "artifact store {location} is unreachable: {source} (check the bucket name, endpoint, region and credentials in [artifacts] or the AWS_* environment)"
    )]
    Unreachable {
        /// The store.
        location: String,
        /// What the store answered.
        #[source]
        source: Box<object_store::Error>,
    },

    /// Listing a prefix failed.
    #[error("listing {prefix:?} in artifact store {location} failed: {source}")]
    List {
        /// The store.
        location: String,
        /// The prefix being listed.
        prefix: String,
        /// What the store answered.
        #[source]
        source: Box<object_store::Error>,
    },

    /// Deleting below a prefix stopped part-way (a delete or the listing failed). What was
    /// deleted before the failure is in `done`, so the caller can audit it; running the
    /// deletion again finishes the job.
    #[error(
        "deleting below {prefix:?} in artifact store {location} stopped after {} objects ({} bytes): {source}",
        done.objects, done.bytes
    )]
    DeleteInterrupted {
        /// The store.
        location: String,
        /// The prefix being deleted.
        prefix: String,
        /// What had been deleted (or, in dry-run, counted) before the failure.
        done: Box<DeleteReport>,
        /// The failure (a delete naming its key, or the listing).
        #[source]
        source: Box<object_store::Error>,
    },

    /// The job store could not say which job ids it knows (orphan detection fails closed).
    #[error("asking the job store which job ids it knows failed: {0}")]
    KnownIds(#[source] BoxError),

    /// A key would be built from an id that is not a valid job id or organisation.
    #[error("refusing to build an artifact key from {what} {input:?}: {problem}")]
    InvalidId {
        /// `job id` or `organisation`.
        what: &'static str,
        /// The rejected value.
        input: String,
        /// Why it was rejected.
        problem: &'static str,
    },

    /// A deletion was asked for below something that is not one job's prefix (a corrupted task,
    /// a bug): jobwarden only ever deletes below `jobs/<org>/<id>`, `partial/<id>`, `logs/<id>`.
    #[error(
        "refusing to delete below {prefix:?} in artifact store {location}: it is not one job's prefix (jobs/<org>/<job-id>, partial/<job-id> or logs/<job-id>)"
    )]
    NotAJobPrefix {
        /// The store.
        location: String,
        /// The refused prefix.
        prefix: String,
    },

    /// A queued orphan deletion names a prefix that does not match its kind, organisation and
    /// job id (a corrupted or hand-edited task); nothing is deleted.
    #[error(
        "refusing to delete {prefix:?}: it is not the {kind} prefix of job {job_id} (expected {expected:?})"
    )]
    PrefixMismatch {
        /// The prefix named by the task.
        prefix: String,
        /// The artifact kind.
        kind: super::keys::ArtifactKind,
        /// The job id.
        job_id: String,
        /// The prefix derived from kind, organisation and job id.
        expected: String,
    },
}

/// A boxed error from a [`KnownIds`](super::orphans::KnownIds) implementation.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What a failed deletion had already done (deleted objects and bytes), for the audit log.
    pub fn partial_deletion(&self) -> Option<&DeleteReport> {
        match self {
            Error::DeleteInterrupted { done, .. } => Some(done),
            _ => None,
        }
    }
}
