//! Object storage for job artifacts: retention deletes and orphan detection, through one
//! `object_store` interface for `file://` and `s3://` (`gs://`, `az://` later).
//!
//! jobwarden never writes artifacts: the jobs write `jobs/<org>/<job-id>/…`, jobwarden-init writes
//! `partial/<job-id>/artifacts.tar.gz`, the runtimes write `logs/<job-id>/…` ([`keys`]). This
//! module only lists and deletes, and only below prefixes built from validated ids.
//!
//! - [`config`]: the `[artifacts]` section and its validation (pure).
//! - [`Artifacts`]: an opened store, scoped to its base prefix; [`Artifacts::check_reachable`]
//!   for startup and `/readyz`.
//! - [`keys`]: the layout; ids to prefixes and listed keys back to jobs (pure).
//! - [`delete_prefix`]: deletes one prefix page by page; resumable; the executor of the
//!   cleanup queue's artifact tasks.
//! - [`retention`]: when each kind of a finished job's artifacts is due (pure).
//! - [`orphans`]: streaming orphan scan (fails closed), the bounded deletion plan (pure), and the
//!   re-checking orphan delete.
//!
//! Time is an argument: nothing here reads the clock. Every destructive function takes
//! `dry_run` and returns counts and bytes for the audit log. What is *not* here: the queue, the
//! audit rows, the schedule, the CLI and HTTP (the daemon owns those).

pub mod config;
mod delete;
mod error;
pub mod keys;
pub mod orphans;
pub mod retention;

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::RetryConfig;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;

pub use config::ArtifactsConfig;
pub use delete::{DEFAULT_PAGE_SIZE, DeleteReport, delete_prefix};
pub use error::{BoxError, Error, Result};
pub use keys::ArtifactKind;

use config::StoreUrl;

/// An opened artifact store. Every path passed to or returned by it is relative to the base
/// prefix (`s3://bucket/<base>/…`, or the `file://` directory), so `jobs/acme/job-1` means the
/// same thing on every backend.
#[derive(Clone)]
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    base: Path,
    location: String,
    local_root: Option<PathBuf>,
}

/// Shows where the store is, never the client's configuration (which holds credentials).
impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifacts")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Artifacts {
    /// Opens the store `config` describes. `url` must be set (the daemon fills in
    /// [`config::default_url`] first).
    ///
    /// - `file:///dir`: creates `dir` if it is missing; empty directories left behind by deletes
    ///   are removed.
    /// - `s3://bucket/prefix`: settings from the `AWS_*` environment, overlaid with the config
    ///   (config wins; when the config gives an access key, the environment's keys and session
    ///   token are ignored). Requests are path-style whenever a custom endpoint is in effect.
    ///   `retry` bounds how long a failing request is retried; no request is made here.
    pub fn open(config: &ArtifactsConfig, retry: RetryConfig) -> Result<Artifacts> {
        if let Err(mut errors) = config.validate() {
            return Err(errors.swap_remove(0).into());
        }
        match config.store_url()? {
            StoreUrl::File { root } => open_file(root),
            StoreUrl::S3 { bucket, prefix } => open_s3(config, retry, bucket, prefix),
        }
    }

    /// Wraps an existing store (tests, benchmarks: `InMemory`, fault injectors). `prefix` is
    /// the base prefix, empty for the whole store.
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: Path) -> Artifacts {
        let location = if prefix.is_root() {
            format!("{store}")
        } else {
            format!("{store} under {:?}", prefix.as_ref())
        };
        Artifacts::scoped(store, prefix, location, None)
    }

    fn scoped(
        store: Arc<dyn ObjectStore>,
        base: Path,
        location: String,
        local_root: Option<PathBuf>,
    ) -> Artifacts {
        let store = if base.is_root() {
            store
        } else {
            Arc::new(PrefixStore::new(store, base.clone())) as Arc<dyn ObjectStore>
        };
        Artifacts {
            store,
            base,
            location,
            local_root,
        }
    }

    /// The store, scoped to the base prefix.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The base prefix inside the bucket or store (empty for `file://`).
    pub fn base_prefix(&self) -> &Path {
        &self.base
    }

    /// Where the store is, for messages: `s3://bucket/prefix at <endpoint>`, `file:///dir`.
    /// Never contains credentials.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// A cheap probe for startup and `/readyz`: lists the top level below the base prefix (a
    /// handful of entries: `jobs/`, `partial/`, `logs/`). Fails with an error naming the bucket
    /// and endpoint when the bucket is missing, the credentials are refused or the server
    /// cannot be reached; for `file://` when the directory is gone or unreadable.
    ///
    /// How long it may take is bounded by the `RetryConfig` given to [`Artifacts::open`] and
    /// the client's request timeout; callers on a hot path (`/readyz`) should add their own
    /// timeout.
    pub async fn check_reachable(&self) -> Result<()> {
        let unreachable = |source| Error::Unreachable {
            location: self.location.clone(),
            source: Box::new(source),
        };
        if let Some(root) = &self.local_root {
            let meta = tokio::fs::metadata(root).await.map_err(|e| {
                unreachable(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                })
            })?;
            if !meta.is_dir() {
                return Err(unreachable(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: format!("{} is not a directory", root.display()).into(),
                }));
            }
        }
        self.store
            .list_with_delimiter(None)
            .await
            .map(drop)
            .map_err(unreachable)
    }
}

fn open_file(root: PathBuf) -> Result<Artifacts> {
    let location = url::Url::from_directory_path(&root)
        .map(String::from)
        .unwrap_or_else(|()| root.display().to_string());
    let open_err = |problem: String| Error::Open {
        location: location.clone(),
        problem,
    };
    std::fs::create_dir_all(&root)
        .map_err(|e| open_err(format!("cannot create {}: {e}", root.display())))?;
    let fs = LocalFileSystem::new_with_prefix(&root)
        .map_err(|e| open_err(e.to_string()))?
        .with_automatic_cleanup(true);
    Ok(Artifacts::scoped(
        Arc::new(fs),
        Path::ROOT,
        location,
        Some(root),
    ))
}

fn open_s3(
    config: &ArtifactsConfig,
    retry: RetryConfig,
    bucket: String,
    prefix: Path,
) -> Result<Artifacts> {
    let config_has_keys = config.access_key_id.is_some();
    let mut builder = AmazonS3Builder::new();
    // `AmazonS3Builder::from_env`, minus the values the config overrides (so that, say, an
    // environment session token is never paired with the config's access key).
    for (key, value) in std::env::vars_os() {
        let (Some(key), Some(value)) = (key.to_str(), value.to_str()) else {
            continue;
        };
        if !key.starts_with("AWS_") {
            continue;
        }
        let Ok(k) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() else {
            continue;
        };
        let overridden = match k {
            AmazonS3ConfigKey::Bucket => true,
            AmazonS3ConfigKey::AccessKeyId
            | AmazonS3ConfigKey::SecretAccessKey
            | AmazonS3ConfigKey::Token => config_has_keys,
            AmazonS3ConfigKey::Endpoint | AmazonS3ConfigKey::S3Endpoint => {
                config.endpoint.is_some()
            }
            _ => false,
        };
        if !overridden {
            builder = builder.with_config(k, value);
        }
    }
    builder = builder.with_bucket_name(&bucket).with_retry(retry);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &config.region {
        builder = builder.with_region(region);
    }
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        builder = builder
            .with_access_key_id(id)
            .with_secret_access_key(secret.expose());
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token.expose());
        }
    }
    if let Some(allow) = config.allow_http {
        builder = builder.with_allow_http(allow);
    }
    if let Some(bulk) = config.bulk_delete {
        builder = builder.with_config(AmazonS3ConfigKey::DisableBulkDelete, (!bulk).to_string());
    }
    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
        .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
    if endpoint.is_some() {
        // S3-compatible servers (MinIO, Ceph, moto, …) expect `<endpoint>/<bucket>/<key>`.
        builder = builder.with_virtual_hosted_style_request(false);
    }
    let region = builder
        .get_config_value(&AmazonS3ConfigKey::Region)
        .unwrap_or_else(|| "us-east-1".to_owned());
    let location = match &endpoint {
        Some(e) => format!("s3://{bucket}/{prefix} at {e}"),
        None => format!("s3://{bucket}/{prefix} (AWS region {region})"),
    };
    let s3 = builder.build().map_err(|e| Error::Open {
        location: location.clone(),
        problem: e.to_string(),
    })?;
    Ok(Artifacts::scoped(Arc::new(s3), prefix, location, None))
}

/// Retries for object-storage calls: a few quick ones; the durable queue retries the rest.
pub fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(20),
        ..object_store::RetryConfig::default()
    }
}
