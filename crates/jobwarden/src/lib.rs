//! jobwarden: job timeouts, escalation and cleanup for local processes and Kubernetes Jobs.
//!
//! Layout (`docs/architecture.md` draws it): [`engine`] decides without I/O and returns one
//! plan per job; [`executor`] carries plans out on a [`runtime`] (local process groups or
//! the Kubernetes API) and the [`store`] (jobs, the cleanup queue, the audit log); the local
//! [`daemon`] and the [`kubernetes`] controller observe and drive it; [`scheduler`] wakes them
//! when something is due. [`clock`] is the only reader of the clock.

pub mod api_types;
pub mod artifacts;
pub mod cleanup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod duration;
pub mod engine;
pub mod error;
pub mod events;
pub mod executor;
pub mod health;
pub mod hooks;
pub mod http;
pub mod kubernetes;
pub mod metrics;
pub mod model;
pub mod ratelimit;
pub mod reclaimed;
pub mod runtime;
pub mod scheduler;
pub mod store;

/// The policy hierarchy lives with the engine; this path stays for its users.
pub use engine::policy;
pub use error::{Error, Result};
