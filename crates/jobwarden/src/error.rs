//! jobwarden's error type: every failure the library reports, by where it happened. The
//! modules' own errors keep their detail (a store error names the operation and the job, a
//! configuration error the file and the key) and convert into this one; `main` prints it (with
//! `anyhow` at the very top) and the CLI maps it to an exit code.

use std::path::PathBuf;

/// A failure, by where it happened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The configuration file is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Object storage failed.
    #[error(transparent)]
    Artifacts(#[from] crate::artifacts::Error),
    /// The daemon could not start.
    #[error(transparent)]
    Start(#[from] crate::daemon::StartError),
    /// A request to the daemon failed (the CLI's client).
    #[error(transparent)]
    Client(#[from] crate::cli::Failure),
    /// A file or directory could not be read, written or removed.
    #[error("{}: {source}", path.display())]
    File {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A value is not what it must be (a URL, a token, a task's payload): which, and why.
    #[error("{what}: {problem}")]
    Invalid {
        /// What was given, and where.
        what: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A hook's webhook or command failed.
    #[error("{0}")]
    Hook(String),
    /// Something did not happen in the time it had.
    #[error("{what} did not happen within {secs} s")]
    Timeout {
        /// What.
        what: String,
        /// How long it had.
        secs: u64,
    },
}

impl Error {
    /// `what` is invalid because of `problem`.
    pub fn invalid(what: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            problem: problem.into(),
        }
    }

    /// Reading or writing `path` failed.
    pub fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::File {
            path: path.into(),
            source,
        }
    }
}

/// A result with jobwarden's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
