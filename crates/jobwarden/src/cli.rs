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
    /// Listen address [default: [server] listen, i.e. 127.0.0.1:7800].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Store URL [default: sqlite://<data-dir>/jobwarden.db].
    #[arg(long, env = "JOBWARDEN_STORE")]
    pub store: Option<String>,
    /// Artifacts URL [default: file://<data-dir>/artifacts].
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
    /// Timeout (capped by the organisation maximum and the hard maximum).
    #[arg(long)]
    pub timeout: Option<Dur>,
    /// Grace period between SIGTERM and SIGKILL.
    #[arg(long)]
    pub grace: Option<Dur>,
    /// Keep the finished job's workspace this long.
    #[arg(long)]
    pub ttl: Option<Dur>,
    /// Job type.
    #[arg(long = "type")]
    pub job_type: Option<String>,
    /// Organisation.
    #[arg(long)]
    pub org: Option<String>,
    /// Name.
    #[arg(long)]
    pub name: Option<String>,
    /// Judge the job dead when no heartbeat arrives for this long.
    #[arg(long)]
    pub heartbeat_timeout: Option<Dur>,
    /// The command and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// A CLI failure with its exit code.
#[derive(Debug)]
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
        Cmd::Demo => crate::demo::run().await.map_err(|e| fail(1, e)),
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
            let req = SubmitRequest {
                command: a.command,
                name: a.name,
                org: a.org,
                job_type: a.job_type,
                timeout: a.timeout,
                grace: a.grace,
                ttl: a.ttl,
                heartbeat_timeout: a.heartbeat_timeout,
            };
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
            let path = if q.is_empty() {
                "/v1/audit".to_owned()
            } else {
                format!("/v1/audit?{}", q.join("&"))
            };
            let rows: Vec<AuditEntry> = Client::new(&server)?.get(&path).await?;
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

async fn run(args: RunArgs) -> Result<(), Failure> {
    if args.runtime == RuntimeArg::Kubernetes {
        let opts = crate::kubernetes::cli::RunOptions {
            config: args.config.clone(),
            store: args.store.clone(),
            data_dir: absolute(&args.data_dir),
            artifacts: args.artifacts.clone(),
            listen: args.listen,
            dry_run: args.dry_run,
        };
        return crate::kubernetes::cli::run(opts, wait_for_signal())
            .await
            .map_err(|(code, message)| fail(code, message));
    }
    let (config, source) = match &args.config {
        Some(path) => (
            Config::load(path).map_err(|e| fail(2, e.to_string()))?,
            path.display().to_string(),
        ),
        None => (Config::default(), "<built-in defaults>".to_owned()),
    };
    let opts = daemon_options(&args, config, &source)?;
    let running = crate::daemon::start(opts)
        .await
        .map_err(|e| fail(1, e.to_string()))?;
    eprintln!(
        "jobwarden listening on http://{} (config: {source})",
        running.addr
    );
    wait_for_signal().await;
    eprintln!("jobwarden: shutting down (running jobs keep running)");
    let _ = running.shutdown.send(true);
    let _ = running.done.await;
    Ok(())
}

/// `run`'s default `--data-dir`.
pub const DEFAULT_DATA_DIR: &str = "./jobwarden-data";

/// The flags of `run` that override the config; none for `config check`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides<'a> {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--store`.
    pub store: Option<&'a str>,
    /// `--artifacts`.
    pub artifacts: Option<&'a str>,
}

/// What `run` derives from its config and flags before it opens anything, checked.
#[derive(Debug, Clone)]
pub struct Preflight {
    /// The listen address.
    pub listen: SocketAddr,
    /// The API's bearer token (read from `[server] token_file`), if any.
    pub token: Option<String>,
    /// The store URL.
    pub store_url: String,
    /// The artifacts URL.
    pub artifacts_url: String,
    /// The admission webhook (`[admission] mode` not `off`; the Kubernetes runtime serves it).
    pub admission: Option<crate::kubernetes::admission::Plan>,
}

/// The one validation path of `run` (both runtimes) and `config check`, beyond the file's own
/// validation ([`Config::load`]): the listen address, the token file (readable, at least 16
/// characters; required off loopback), the store URL's scheme and the artifacts URL. Every
/// problem is exit 2, naming the file (`source`) and the key or the flag.
pub fn preflight(
    config: &Config,
    source: &str,
    data_dir: &Path,
    flags: &Overrides<'_>,
) -> Result<Preflight, Failure> {
    let listen: SocketAddr = match flags.listen {
        Some(a) => a,
        None => config.server.listen.parse().map_err(|e| {
            fail(
                2,
                format!("{source}: server.listen: {:?}: {e}", config.server.listen),
            )
        })?,
    };
    let token = api_token(config, listen, source).map_err(|(code, m)| fail(code, m))?;
    let store_url = match (flags.store, &config.store.url) {
        (Some(url), _) => url.to_owned(),
        (None, Some(url)) => {
            check_store_url(url).map_err(|e| fail(2, format!("{source}: store.url: {e}")))?;
            url.clone()
        }
        (None, None) => format!("sqlite://{}", data_dir.join("jobwarden.db").display()),
    };
    if let Some(url) = flags.store {
        check_store_url(url).map_err(|e| fail(2, format!("--store: {e}")))?;
    }
    let artifacts_url = match (flags.artifacts, &config.artifacts.url) {
        (Some(url), _) => url.to_owned(),
        (None, Some(url)) => url.clone(),
        (None, None) => format!("file://{}", data_dir.join("artifacts").display()),
    };
    crate::artifacts::config::parse_url(&artifacts_url).map_err(|e| {
        let key = if flags.artifacts.is_some() {
            "--artifacts".to_owned()
        } else {
            format!("{source}: artifacts.url")
        };
        fail(2, format!("{key}: {e}"))
    })?;
    let admission = admission_plan(config, source, listen)?;
    Ok(Preflight {
        listen,
        token,
        store_url,
        artifacts_url,
        admission,
    })
}

/// `[admission]` when it is on: its listen address (not the API's), and a certificate and key
/// that load and go together.
fn admission_plan(
    config: &Config,
    source: &str,
    api: SocketAddr,
) -> Result<Option<crate::kubernetes::admission::Plan>, Failure> {
    use crate::kubernetes::admission::tls::{TlsError, load};
    let a = &config.admission;
    if !a.enabled() {
        return Ok(None);
    }
    let listen = a
        .listen_addr()
        .map_err(|e| fail(2, format!("{source}: admission.listen: {e}")))?;
    let overlaps =
        listen.ip() == api.ip() || listen.ip().is_unspecified() || api.ip().is_unspecified();
    if listen.port() == api.port() && listen.port() != 0 && overlaps {
        return Err(fail(
            2,
            format!(
                "{source}: admission.listen: {listen} takes the port of the API ({api}); give the webhook its own port"
            ),
        ));
    }
    let (Some(cert_file), Some(key_file)) = (&a.cert_file, &a.key_file) else {
        // Config::validate requires both; a Config built in code may lack them.
        return Err(fail(
            2,
            format!(
                "{source}: admission.cert_file and admission.key_file are required unless admission.mode = \"off\""
            ),
        ));
    };
    load(cert_file, key_file).map_err(|e| {
        let key = match &e {
            TlsError::Read { file, .. } | TlsError::Pem { file, .. } if file == key_file => {
                "admission.key_file"
            }
            TlsError::NoKey { .. } | TlsError::Pair { .. } => "admission.key_file",
            _ => "admission.cert_file",
        };
        fail(2, format!("{source}: {key}: {e}"))
    })?;
    Ok(Some(crate::kubernetes::admission::Plan {
        listen,
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        mode: a.mode,
        reload_every: crate::kubernetes::admission::tls::RELOAD_EVERY,
    }))
}

/// The store URL schemes [`crate::store::Store::open`] takes.
fn check_store_url(url: &str) -> Result<(), String> {
    if url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        Ok(())
    } else {
        Err(format!(
            "{:?}: not a store URL (sqlite://PATH or postgres://…)",
            crate::store::redact_url(url)
        ))
    }
}

/// Merges flags, config and defaults into daemon options.
pub fn daemon_options(
    args: &RunArgs,
    config: Config,
    source: &str,
) -> Result<crate::daemon::DaemonOptions, Failure> {
    let data_dir = absolute(&args.data_dir);
    let checked = preflight(
        &config,
        source,
        &data_dir,
        &Overrides {
            listen: args.listen,
            store: args.store.as_deref(),
            artifacts: args.artifacts.as_deref(),
        },
    )?;
    Ok(crate::daemon::DaemonOptions {
        config,
        data_dir,
        listen: checked.listen,
        store_url: checked.store_url,
        artifacts_url: checked.artifacts_url,
        dry_run: args.dry_run,
        token: checked.token,
    })
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

/// The API's bearer token: read from `[server] token_file` (config file `source`). Without
/// one, only a loopback `listen` is allowed. Errors are (exit code, message).
pub fn api_token(
    config: &Config,
    listen: SocketAddr,
    source: &str,
) -> Result<Option<String>, (u8, String)> {
    let token = match &config.server.token_file {
        Some(path) => {
            Some(read_token(path).map_err(|e| (2, format!("{source}: server.token_file: {e}")))?)
        }
        None => None,
    };
    if !listen.ip().is_loopback() && token.is_none() {
        return Err((
            2,
            format!(
                "refusing to listen on {listen} without authentication: set [server] token_file in the config (or listen on 127.0.0.1)"
            ),
        ));
    }
    Ok(token)
}

fn read_token(path: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = t.trim().to_owned();
    if t.len() < 16 {
        return Err(format!(
            "{}: the token must be at least 16 characters",
            path.display()
        ));
    }
    Ok(t)
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// A small HTTP client for the daemon.
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// A client for `server`; reads `$JOBWARDEN_TOKEN`.
    pub fn new(server: &ServerArgs) -> Result<Self, Failure> {
        let base = server.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(fail(
                2,
                format!("--server {base:?}: must be an http:// or https:// URL"),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| fail(1, format!("HTTP client: {e}")))?;
        Ok(Client {
            base,
            http,
            token: std::env::var("JOBWARDEN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        })
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T, Failure> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            fail(
                1,
                format!(
                    "cannot reach jobwarden at {} ({e}); is `jobwarden run` running? (--server / JOBWARDEN_SERVER)",
                    self.base
                ),
            )
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| fail(1, format!("{what}: reading response: {e}")))?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<crate::api_types::ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
            return Err(fail(1, format!("{what}: {msg} (HTTP {})", status.as_u16())));
        }
        serde_json::from_slice(&body)
            .map_err(|e| fail(1, format!("{what}: unexpected response: {e}")))
    }

    /// GET `path`.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send(self.http.get(format!("{}{path}", self.base)), path)
            .await
    }

    /// POST `body` to `path`.
    pub async fn post<T: serde::de::DeserializeOwned, B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Failure> {
        self.send(
            self.http.post(format!("{}{path}", self.base)).json(body),
            path,
        )
        .await
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("jobwarden: {e}"),
    }
}

/// `in 3s` / `4s ago`, to the nearest second (2.9 s ahead is `in 3s`, not `in 2s`).
fn ago(now: Timestamp, t: Timestamp) -> String {
    if t >= now {
        format!(
            "in {}",
            crate::duration::format_rounded(crate::model::since(t, now))
        )
    } else {
        format!(
            "{} ago",
            crate::duration::format_rounded(crate::model::since(now, t))
        )
    }
}

/// The `jobs` table: STAGE says where the job is (`completed`: its process exited 0,
/// `failed`: it did not), OUTCOME who ended it (`succeeded`, `terminated`, …), NEXT STEP what
/// jobwarden does next and when (a ladder step, or the cleanup after the TTL). Every column is
/// as wide as its widest cell, so long organisations, types and Kubernetes job ids line up.
pub fn jobs_table(jobs: &[JobView], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let elapsed = match (j.started_at, j.finished_at) {
                (Some(s), Some(f)) => crate::duration::format_duration(crate::model::since(f, s)),
                (Some(s), None) => crate::duration::format_duration(crate::model::since(now, s)),
                _ => "-".into(),
            };
            vec![
                j.id.clone(),
                clip(&j.name, 24),
                j.org.clone().unwrap_or_else(|| "-".into()),
                j.job_type.clone().unwrap_or_else(|| "-".into()),
                j.stage.as_str().to_owned(),
                j.outcome.map_or("-", |o| o.as_str()).to_owned(),
                elapsed,
                crate::duration::format_duration(Duration::from_secs(j.effective_timeout_seconds)),
                next_step(j, now),
            ]
        })
        .collect();
    use Align::{Left as L, Right as R};
    table(
        &[
            ("ID", L),
            ("NAME", L),
            ("ORG", L),
            ("TYPE", L),
            ("STAGE", L),
            ("OUTCOME", L),
            ("ELAPSED", R),
            ("TIMEOUT", R),
            ("NEXT STEP", L),
        ],
        &rows,
    )
}

/// How a table column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// `rows` under a header, each column as wide as its widest cell (in characters), two spaces
/// apart; the last column is not padded.
fn table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain([columns[i].0.chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns.len()).map(width).collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate().take(columns.len()) {
            let last = i + 1 == columns.len();
            if i > 0 {
                out.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            match columns[i].1 {
                Align::Right => {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
                Align::Left if last => out.push_str(cell),
                Align::Left => {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&mut columns.iter().map(|c| c.0));
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

/// `s` cut to at most `max` characters (never inside a character), `…` marking a cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The NEXT STEP cell: the next ladder step, or a finished job's cleanup, with when.
fn next_step(j: &JobView, now: Timestamp) -> String {
    match (&j.next_step, j.cleanup_at) {
        (Some(n), _) => format!("{} {}", n.step, ago(now, n.due_at)),
        (None, Some(at)) if at > now => format!("cleanup {}", ago(now, at)),
        (None, Some(_)) => "cleanup now".to_owned(),
        (None, None) => "-".to_owned(),
    }
}

fn print_jobs(jobs: &[JobView], now: Timestamp) {
    print!("{}", jobs_table(jobs, now));
}

fn print_job(j: &JobView) {
    let opt = |t: Option<Timestamp>| t.map(fmt_ts).unwrap_or_else(|| "-".into());
    println!("id:        {}", j.id);
    println!("name:      {}", j.name);
    println!(
        "org/type:  {} / {}",
        j.org.as_deref().unwrap_or("-"),
        j.job_type.as_deref().unwrap_or("-")
    );
    println!("stage:     {}", j.stage);
    println!(
        "outcome:   {}",
        j.outcome
            .map(|o| o.to_string())
            .unwrap_or_else(|| "-".into())
    );
    println!("reason:    {}", j.reason.as_deref().unwrap_or("-"));
    println!(
        "pid:       {}",
        j.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
    );
    println!("started:   {}", opt(j.started_at));
    println!("finished:  {}", opt(j.finished_at));
    println!(
        "timeout:   {}  grace: {}",
        crate::duration::format_duration(Duration::from_secs(j.effective_timeout_seconds)),
        crate::duration::format_duration(Duration::from_secs(j.grace_period_seconds))
    );
    println!("deadline:  {}", opt(j.deadline));
    for s in &j.steps {
        println!(
            "step:      {:<12} due {}  taken {}",
            s.step.as_str(),
            fmt_ts(s.due_at),
            fmt_ts(s.at)
        );
    }
    if let Some(n) = &j.next_step {
        println!("next:      {} at {}", n.step, fmt_ts(n.due_at));
    }
    if let Some(at) = j.cleanup_at {
        println!("cleanup:   at {} (its TTL)", fmt_ts(at));
    }
}

fn print_audit(rows: &[AuditEntry]) {
    print!("{}", audit_table(rows));
}

/// The `audit` table.
fn audit_table(rows: &[AuditEntry]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                fmt_ts(r.timestamp),
                r.job_id.clone(),
                r.action.as_str().to_owned(),
                r.success.to_string(),
                if r.dry_run { "yes" } else { "" }.to_owned(),
                format!(
                    "{}{}",
                    r.reason,
                    r.error_message
                        .as_deref()
                        .map(|e| format!(" (error: {e})"))
                        .unwrap_or_default()
                ),
            ]
        })
        .collect();
    use Align::Left as L;
    table(
        &[
            ("TIME", L),
            ("JOB", L),
            ("ACTION", L),
            ("OK", L),
            ("DRY", L),
            ("REASON", L),
        ],
        &cells,
    )
}

fn print_plan(plan: &[PlanEntry], now: Timestamp) {
    let cells: Vec<Vec<String>> = plan
        .iter()
        .map(|p| {
            let when = match (p.due_now, p.due_at) {
                (true, _) => "now".to_owned(),
                (false, Some(t)) => ago(now, t),
                (false, None) => "-".to_owned(),
            };
            vec![
                p.job_id.clone(),
                clip(&p.name, 24),
                p.stage.as_str().to_owned(),
                p.action.clone(),
                format!(
                    "{when}{}",
                    p.detail
                        .as_deref()
                        .map(|d| format!("  ({d})"))
                        .unwrap_or_default()
                ),
            ]
        })
        .collect();
    use Align::Left as L;
    print!(
        "{}",
        table(
            &[
                ("JOB", L),
                ("NAME", L),
                ("STAGE", L),
                ("ACTION", L),
                ("WHEN", L)
            ],
            &cells
        )
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobId, JobRecord, Outcome, RuntimeKind, Stage};

    fn job(id: &str, name: &str, org: Option<&str>, stage: Stage) -> JobView {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("ts");
        JobView::from(&JobRecord {
            id: JobId::parse(id).expect("id"),
            run_id: "r".into(),
            attempt: 0,
            runtime: RuntimeKind::Local,
            namespace: None,
            name: name.into(),
            org: org.map(Into::into),
            job_type: None,
            stage,
            outcome: (stage == Stage::Completed).then_some(Outcome::Terminated),
            reason: None,
            created_at: t,
            started_at: Some(t),
            finished_at: None,
            timeout: Duration::from_secs(3600),
            grace: Duration::from_secs(30),
            ttl: None,
            deadline: None,
            steps: vec![],
            heartbeat_timeout: None,
            last_heartbeat: None,
            recovery_attempts: 0,
            pid: None,
            pid_start_ticks: None,
            exit_code: None,
            signal: None,
            spec: serde_json::Value::Null,
            dry_run: false,
        })
    }

    /// Where each header word starts in `line`'s columns: every row must put a cell there.
    fn column_starts(header: &str) -> Vec<usize> {
        let chars: Vec<char> = header.chars().collect();
        (0..chars.len())
            .filter(|&i| {
                chars[i] != ' ' && (i == 0 || chars[i - 1] == ' ' && (i < 2 || chars[i - 2] == ' '))
            })
            .collect()
    }

    #[test]
    fn the_jobs_table_stays_aligned_with_long_names_orgs_and_ids() {
        let now = chrono::DateTime::from_timestamp(1_800_000_060, 0).expect("ts");
        let jobs = [
            job("01aaaaaaaaaaaaaaaaaaaaaaaa", "short", None, Stage::Running),
            job(
                "a-kubernetes-job-id-that-is-far-longer-than-a-ulid",
                "ünïcode-nämé-that-goes-on-and-on",
                Some("engineering-platform"),
                Stage::Completed,
            ),
        ];
        let text = jobs_table(&jobs, now);
        let lines: Vec<&str> = text.lines().collect();
        let starts = column_starts(lines[0]);
        assert_eq!(starts.len(), 9, "{text}");
        for row in &lines[1..] {
            let chars: Vec<char> = row.chars().collect();
            // Left-aligned columns (all but ELAPSED and TIMEOUT) start where their header does.
            for (col, &at) in starts
                .iter()
                .enumerate()
                .filter(|(c, _)| ![6, 7].contains(c))
            {
                assert!(
                    chars.get(at).is_some_and(|c| *c != ' ') && (at == 0 || chars[at - 1] == ' '),
                    "column {col} misaligned in:\n{text}"
                );
            }
        }
        assert!(text.contains("engineering-platform  -"), "{text}");
        assert!(text.contains("ünïcode-nämé-that-goes-…"), "{text}");
    }
}
