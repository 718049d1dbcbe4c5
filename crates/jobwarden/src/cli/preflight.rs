//! `jobwarden run`'s local daemon launch, and the one preflight (`config check` and both
//! runtimes' `run`): configuration, store URL, token, listen address.

use super::*;

pub(super) async fn run(args: RunArgs) -> Result<(), Failure> {
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
pub(super) fn check_store_url(url: &str) -> crate::Result<()> {
    if url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        Ok(())
    } else {
        Err(crate::Error::invalid(
            format!("{:?}", crate::store::redact_url(url)),
            "not a store URL (sqlite://PATH or postgres://…)",
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

pub(super) fn absolute(p: &Path) -> PathBuf {
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

pub(super) fn read_token(path: &Path) -> crate::Result<String> {
    let t = std::fs::read_to_string(path).map_err(|e| crate::Error::file(path, e))?;
    let t = t.trim().to_owned();
    if t.len() < 16 {
        return Err(crate::Error::invalid(
            path.display().to_string(),
            "the token must be at least 16 characters",
        ));
    }
    Ok(t)
}

pub(super) async fn wait_for_signal() {
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
