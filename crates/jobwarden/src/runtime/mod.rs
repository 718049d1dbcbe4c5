//! Runtimes carry out decisions on real jobs. [`local`] runs OS processes on this machine;
//! the Kubernetes runtime is a separate adapter over batch/v1 Jobs.

pub mod local;
pub mod proc;
