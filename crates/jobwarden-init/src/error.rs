//! The crate's error type (STYLE.md §6): one enum, a `Result` alias.
//!
//! Configuration errors name the flag or environment variable the bad value came from, quote
//! the value and say what would be accepted; `main` turns them into exit status 2.
//! Errors from save steps never end the supervisor: they become a failed step in the summary.

use std::path::PathBuf;

use crate::duration::DurationError;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in jobwarden-init.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required setting is missing.
    #[error("{key} is required: {hint}")]
    Missing { key: String, hint: &'static str },

    /// The job id is not `[A-Za-z0-9._-]{1,128}` or is `.`/`..`.
    #[error(
        "invalid job id {value:?} from {key}: {reason}; a job id is 1 to 128 characters from \
         A-Z a-z 0-9 . _ - and is not \".\" or \"..\""
    )]
    InvalidJobId {
        key: String,
        value: String,
        reason: &'static str,
    },

    /// A duration did not parse.
    #[error("invalid duration {value:?} from {key}: {source}; use {grammar}", grammar = crate::duration::GRAMMAR)]
    InvalidDuration {
        key: String,
        value: String,
        source: DurationError,
    },

    /// A setting has a value that is well-formed but not allowed.
    #[error("invalid {key} {value:?}: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },

    /// No command was given after the options.
    #[error("no command given: usage is `jobwarden-init [OPTIONS] -- CMD [ARGS...]` (see --help)")]
    MissingCommand,

    /// `--repo` exists but cannot be used.
    #[error("--repo {}: {reason}", path.display())]
    Repo { path: PathBuf, reason: String },

    /// `--artifacts-dir` exists but is not a directory.
    #[error("--artifacts-dir {}: {reason}", path.display())]
    ArtifactsDir { path: PathBuf, reason: String },

    /// Setting up the supervisor itself failed (signal handlers, runtime).
    #[error("cannot set up the supervisor: {what}: {source}")]
    Setup {
        what: &'static str,
        source: std::io::Error,
    },

    /// The command could not be started.
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },

    /// A `git` command failed or could not be run.
    #[error("{0}")]
    Git(String),

    /// Building or streaming the artifacts archive failed.
    #[error("archiving {}: {source}", dir.display())]
    Archive {
        dir: PathBuf,
        source: std::io::Error,
    },

    /// Streaming the archive to the object store failed.
    #[error("uploading {url}: {source}")]
    Upload { url: String, source: std::io::Error },

    /// The object store could not be configured or opened.
    #[error("object store {url}: {source}")]
    Store {
        url: String,
        source: object_store::Error,
    },
}

impl Error {
    /// The exit status `main` uses when this error ends jobwarden-init before or instead of
    /// the child: 126/127 for a command that cannot be run or found (as `env`, `timeout` and
    /// shells do), 2 for every configuration or setup error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Spawn { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            },
            _ => 2,
        }
    }
}
