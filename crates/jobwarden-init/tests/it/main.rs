//! Integration tests: the real `jobwarden-init` binary around real child processes, real git
//! repositories with a bare remote on disk, a real file:// store and the moto S3 server, and a
//! tiny HTTP server for heartbeats. Every wait is bounded (see `harness::wait_for`).

mod harness;

mod checkpoint;
mod config_errors;
mod heartbeat;
mod reaping;
mod save_artifacts;
mod save_git;
mod signals;
