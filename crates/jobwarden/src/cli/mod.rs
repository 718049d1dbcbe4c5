//! The `jobwarden` command line: flags (clap derive, with `env =` fallbacks), the daemon
//! launcher and the HTTP client behind every other command.
//!
//! Exit codes: 0 success; 1 the operation failed (daemon unreachable, job unknown, …);
//! 2 bad usage or bad configuration (clap's own usage errors are 2 as well).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::api_types::{JobView, OrphanReport, PlanEntry, SubmitRequest};
use crate::config::Config;
use crate::duration::Dur;
use crate::model::{AuditEntry, Timestamp, fmt_ts};

/// Job timeouts, escalation and cleanup.
#[derive(Debug, Parser)]
#[command(name = "jobwarden", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the daemon.
    Run(RunArgs),
    /// Submit a job: prints only its id.
    Submit(SubmitArgs),
    /// List jobs.
    Jobs {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one job.
    Job {
        #[command(subcommand)]
        cmd: JobCmd,
    },
    /// Cancel a job: SIGTERM now, then the normal ladder.
    Cancel {
        /// Job id.
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Query the audit log.
    Audit {
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Only this action (warn, soft_kill, hard_kill, force_delete, ttl_cleanup, …).
        #[arg(long)]
        action: Option<String>,
        /// Only rows newer than this (a duration back from now, e.g. 1h).
        #[arg(long)]
        since: Option<Dur>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Dry run: what would be done now, and the next steps with their times.
    Plan {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Report orphaned workspaces and logs; `--clean` queues their removal.
    Orphans {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Queue removal of what is found.
        #[arg(long)]
        clean: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// What jobwarden's actions reclaimed, per organisation and day: CPU-seconds and memory
    /// GiB-hours its kills saved, bytes its deletions freed.
    Report {
        /// Only what happened since then (a duration back from now, e.g. 7d) [default: all].
        #[arg(long)]
        since: Option<Dur>,
        /// Only this organisation's jobs.
        #[arg(long)]
        org: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the dead-lettered cleanup tasks with their last error; `requeue ID` puts one back.
    #[command(args_conflicts_with_subcommands = true)]
    DeadLetters {
        #[command(subcommand)]
        cmd: Option<DeadLettersCmd>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Start a daemon on a temporary data dir and run a short, real story (under a minute).
    Demo,
    /// Render Kubernetes manifests (no cluster needed).
    Manifest {
        #[command(subcommand)]
        cmd: crate::kubernetes::cli::ManifestCmd,
    },
}

/// `job …`
#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Show a job.
    Show {
        /// Job id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `dead-letters …`
#[derive(Debug, Subcommand)]
pub enum DeadLettersCmd {
    /// Put a dead-lettered task back in the queue, due now, its attempts reset.
    Requeue {
        /// The task id (`jobwarden dead-letters` lists them).
        id: i64,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate a config file: prints "ok" (exit 0) or the problem (exit 2).
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

/// Where the daemon is.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Daemon URL.
    #[arg(
        long,
        env = "JOBWARDEN_SERVER",
        default_value = "http://127.0.0.1:7800"
    )]
    pub server: String,
}

/// `jobwarden run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// TOML configuration file (every key has a default).
    #[arg(long, env = "JOBWARDEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Workspaces, logs, the SQLite store and file:// artifacts.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Listen address (default: the config's `[server] listen`, i.e. 127.0.0.1:7800).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Store URL (default: sqlite://DATA_DIR/jobwarden.db).
    #[arg(long, env = "JOBWARDEN_STORE")]
    pub store: Option<String>,
    /// Artifacts URL (default: file://DATA_DIR/artifacts).
    #[arg(long)]
    pub artifacts: Option<String>,
    /// Which jobs to police.
    #[arg(long, value_enum, default_value = "local")]
    pub runtime: RuntimeArg,
    /// Record every decision in the audit log (marked dry-run); carry none out.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeArg {
    /// Processes on this machine.
    Local,
    /// batch/v1 Jobs in a cluster.
    Kubernetes,
}

/// `jobwarden submit`.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub job: JobFlags,
}

/// A job's settings, as `submit` sends them and `manifest job` renders them.
#[derive(Debug, Clone, Args)]
pub struct JobFlags {
    /// Timeout, capped by the organisation maximum and the hard maximum [default: the job
    /// type's or the global timeout].
    #[arg(long)]
    pub timeout: Option<Dur>,
    /// Grace period between SIGTERM and SIGKILL [default: the job type's or the global grace].
    #[arg(long)]
    pub grace: Option<Dur>,
    /// Keep the finished job (its workspace, or its Job) this long [default: the retention
    /// for its outcome].
    #[arg(long)]
    pub ttl: Option<Dur>,
    /// Job type.
    #[arg(long = "type")]
    pub job_type: Option<String>,
    /// Organisation.
    #[arg(long)]
    pub org: Option<String>,
    /// Name (a local job's default: the program's file name; a Job's: flowforge-JOB_ID).
    #[arg(long)]
    pub name: Option<String>,
    /// Judge the job dead when no heartbeat arrives for this long.
    #[arg(long)]
    pub heartbeat_timeout: Option<Dur>,
    /// Container image, holding jobwarden-init at `[kubernetes] init_path` (Kubernetes
    /// mode: required there, refused by a local daemon).
    #[arg(long)]
    pub image: Option<String>,
    /// Namespace of the Job (Kubernetes mode) [default: submit: the daemon's one watched
    /// namespace; manifest job: kubectl's current one].
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

impl JobFlags {
    /// The request these flags make.
    pub fn request(self) -> SubmitRequest {
        SubmitRequest {
            command: self.command,
            name: self.name,
            org: self.org,
            job_type: self.job_type,
            timeout: self.timeout,
            grace: self.grace,
            ttl: self.ttl,
            heartbeat_timeout: self.heartbeat_timeout,
            image: self.image,
            namespace: self.namespace,
        }
    }
}

/// A CLI failure with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// 1 or 2.
    pub code: u8,
    /// Printed to stderr.
    pub message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// Runs a parsed command line.
pub async fn main(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Cmd::Run(args) => run(args).await,
        Cmd::Demo => crate::demo::run().await.map_err(|e| fail(1, e.to_string())),
        Cmd::Manifest { cmd } => crate::kubernetes::cli::manifest(cmd, crate::clock::now())
            .map(|out| print!("{out}"))
            .map_err(|(code, message)| fail(code, message)),
        Cmd::Config {
            cmd: ConfigCmd::Check { file },
        } => {
            // The checks `run` makes, no fewer: a file called ok here starts.
            let config = Config::load(&file).map_err(|e| fail(2, e.to_string()))?;
            preflight(
                &config,
                &file.display().to_string(),
                &absolute(Path::new(DEFAULT_DATA_DIR)),
                &Overrides::default(),
            )?;
            println!("ok");
            Ok(())
        }
        Cmd::Submit(a) => {
            let req = a.job.request();
            // The server's own rules, checked before anything is sent: bad usage exits 2
            // naming the flag, not 1 with the server's 400.
            crate::daemon::api::validate_submit(&req)
                .map_err(|e| fail(2, format!("{}: {}", e.flag(), e.problem)))?;
            let job: JobView = Client::new(&a.server)?.post("/v1/jobs", &req).await?;
            println!("{}", job.id);
            Ok(())
        }
        Cmd::Jobs { json, server } => {
            let jobs: Vec<JobView> = Client::new(&server)?.get("/v1/jobs").await?;
            if json {
                print_json(&jobs);
            } else {
                print_jobs(&jobs, crate::clock::now());
            }
            Ok(())
        }
        Cmd::Job {
            cmd: JobCmd::Show { id, json, server },
        } => {
            let job: JobView = Client::new(&server)?.get(&format!("/v1/jobs/{id}")).await?;
            if json {
                print_json(&job);
            } else {
                print_job(&job);
            }
            Ok(())
        }
        Cmd::Cancel { id, server } => {
            let job: JobView = Client::new(&server)?
                .post(&format!("/v1/jobs/{id}/cancel"), &serde_json::json!({}))
                .await?;
            println!("{} {}", job.id, job.stage);
            Ok(())
        }
        Cmd::Audit {
            job,
            action,
            since,
            json,
            server,
        } => {
            let mut q = Vec::new();
            if let Some(j) = job {
                q.push(format!("job={j}"));
            }
            if let Some(a) = action {
                q.push(format!("action={a}"));
            }
            if let Some(s) = since {
                q.push(format!("since={s}"));
            }
            let rows: Vec<AuditEntry> = Client::new(&server)?
                .get(&with_query("/v1/audit", &q))
                .await?;
            if json {
                print_json(&rows);
            } else {
                print_audit(&rows);
            }
            Ok(())
        }
        Cmd::Plan { json, server } => {
            let plan: Vec<PlanEntry> = Client::new(&server)?.get("/v1/plan").await?;
            if json {
                print_json(&plan);
            } else {
                print_plan(&plan, crate::clock::now());
            }
            Ok(())
        }
        Cmd::Report {
            since,
            org,
            json,
            server,
        } => {
            if let Some(o) = &org {
                crate::model::check_name("organisation", o)
                    .map_err(|e| fail(2, format!("--org: {e}")))?;
            }
            let mut q = Vec::new();
            if let Some(s) = since {
                q.push(format!("since={s}"));
            }
            if let Some(o) = org {
                q.push(format!("org={o}"));
            }
            let report: crate::reclaimed::Report = Client::new(&server)?
                .get(&with_query("/v1/report", &q))
                .await?;
            if json {
                print_json(&report);
            } else {
                print!("{}", crate::reclaimed::report_table(&report));
            }
            Ok(())
        }
        Cmd::DeadLetters {
            cmd: Some(DeadLettersCmd::Requeue { id, server }),
            ..
        } => {
            let _: serde_json::Value = Client::new(&server)?
                .post(
                    &format!("/v1/dead-letters/{id}/requeue"),
                    &serde_json::json!({}),
                )
                .await?;
            println!("{id} requeued");
            Ok(())
        }
        Cmd::DeadLetters {
            cmd: None,
            json,
            server,
        } => {
            let tasks: Vec<crate::store::Task> =
                Client::new(&server)?.get("/v1/dead-letters").await?;
            if json {
                print_json(&tasks);
            } else {
                print!("{}", dead_letters_table(&tasks));
            }
            Ok(())
        }
        Cmd::Orphans {
            json,
            clean,
            server,
        } => {
            let c = Client::new(&server)?;
            let r: OrphanReport = if clean {
                c.post("/v1/orphans/clean", &serde_json::json!({})).await?
            } else {
                c.get("/v1/orphans").await?
            };
            if json {
                print_json(&r);
            } else {
                for s in &r.skipped {
                    println!("skipped {s}");
                }
                let rows: Vec<Vec<String>> = r
                    .orphans
                    .iter()
                    .map(|o| {
                        vec![
                            o.kind.clone(),
                            o.job_id.clone(),
                            o.bytes.to_string(),
                            crate::duration::format_duration(Duration::from_secs(o.age_seconds)),
                            o.name.clone(),
                        ]
                    })
                    .collect();
                use Align::{Left as L, Right as R};
                print!(
                    "{}",
                    table(
                        &[
                            ("KIND", L),
                            ("JOB", L),
                            ("BYTES", R),
                            ("AGE", R),
                            ("PATH", L)
                        ],
                        &rows
                    )
                );
                if clean {
                    println!("{} removal task(s) queued", r.queued);
                }
            }
            Ok(())
        }
    }
}

mod client;
mod preflight;
mod tables;

pub use client::*;
pub use preflight::*;
pub use tables::*;
