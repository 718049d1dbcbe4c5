//! The engine: every timeout, TTL, orphan and recovery decision as a pure function of
//! `(observed state, policy, now)`.
//!
//! Nothing here reads the clock, touches the store, a process, the network or the cluster.
//! Each function returns what to do now and when to look again; the daemon's executor
//! carries the decision out and the [`crate::scheduler`] wakes it at the returned time.
//!
//! - [`ladder`]: warn → soft_kill → hard_kill → force_delete around the deadline.
//! - [`lifecycle`]: stages and the events hooks fire on.
//! - [`policy`]: the timeout hierarchy (job > type > global, capped) and the settings it
//!   resolves from; annotations read into settings.
//! - [`retention`]: TTL after finish per outcome and per artifact type.
//! - [`recovery`]: startup timeout and dead jobs (heartbeats, diagnosis, backoff).
//! - [`orphans`]: the fail-closed set difference.
//! - [`decide`](mod@decide): the one entry point that combines them for a job.
//! - [`plan`]: the decision worked out completely for the executor: texts, audit rows, stage
//!   moves, hooks, cleanup tasks.

pub mod decide;
pub mod ladder;
pub mod lifecycle;
pub mod orphans;
pub mod plan;
pub mod policy;
pub mod recovery;
pub mod retention;

pub use decide::{Decision, Policy, decide};
