//! The `[artifacts]` configuration section: which store holds job artifacts and how to reach it.
//!
//! ```toml
//! [artifacts]
//! url = "s3://bucket/some/prefix"       # or "file:///var/lib/jobwarden/artifacts"
//! endpoint = "http://minio.local:9000"  # S3-compatible server; omit for AWS
//! region = "eu-west-1"
//! access_key_id = "…"                   # omit both to use AWS_* / the instance role
//! secret_access_key = "…"
//! allow_http = true                     # needed for an http:// endpoint
//! ```
//!
//! Every S3 setting not given here comes from the standard `AWS_*` environment
//! (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ALLOW_HTTP`, …); a value here wins over the environment. When a custom
//! endpoint is in effect (from here or from the environment) requests are always path-style
//! (`<endpoint>/<bucket>/<key>`), which every S3-compatible server understands; against AWS
//! itself the `object_store` default applies.
//!
//! This module only parses and validates; it never touches the network or the filesystem.
//! Secrets are wrapped in [`Secret`] so that `Debug` output (logs, panics) never shows them.

use std::fmt;
use std::path::PathBuf;

use object_store::path::Path;
use serde::Deserialize;

/// The `[artifacts]` section. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// `file:///absolute/dir` or `s3://bucket[/prefix]`. `None`: the daemon uses
    /// [`default_url`]`(data_dir)`, i.e. `file://<data-dir>/artifacts`.
    pub url: Option<String>,
    /// S3-compatible server (`https://minio.example:9000`). Requests to it are path-style.
    pub endpoint: Option<String>,
    /// S3 region (default: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// S3 access key id; needs `secret_access_key` too.
    pub access_key_id: Option<String>,
    /// S3 secret access key; needs `access_key_id` too.
    pub secret_access_key: Option<Secret>,
    /// Temporary-credential session token, used with `access_key_id`.
    pub session_token: Option<Secret>,
    /// Allow an `http://` endpoint (default: `AWS_ALLOW_HTTP`, else false).
    pub allow_http: Option<bool>,
    /// Use the multi-object `DeleteObjects` call (default true). Set false for servers that do
    /// not implement it; deletes then go one request per object.
    pub bulk_delete: Option<bool>,
}

/// A secret string: deserialises from a plain string, never shows itself in `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for handing to the S3 client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One problem in the `[artifacts]` section, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// The full key (`artifacts.url`).
    pub key: &'static str,
    /// What is wrong and what to do.
    pub problem: String,
}

impl ConfigError {
    fn new(key: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            key,
            problem: problem.into(),
        }
    }
}

/// Where the artifacts live, as parsed from `artifacts.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A local directory (created on open if missing).
    File {
        /// Absolute directory.
        root: PathBuf,
    },
    /// An S3 bucket, with an optional key prefix all of jobwarden's keys live under.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket (empty for the whole bucket).
        prefix: Path,
    },
}

/// `file://<data_dir>/artifacts`, the default when `artifacts.url` is not set.
pub fn default_url(data_dir: &std::path::Path) -> Result<String, ConfigError> {
    url::Url::from_directory_path(data_dir.join("artifacts"))
        .map(String::from)
        .map_err(|()| {
            ConfigError::new(
                "artifacts.url",
                format!(
                    "cannot derive the default from data directory {}: it must be an absolute path",
                    data_dir.display()
                ),
            )
        })
}

impl ArtifactsConfig {
    /// Every problem in the section (an empty list when it is valid). An unset `url` is valid:
    /// the daemon fills in [`default_url`].
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let is_s3 = match self.url.as_deref().map(parse_url) {
            Some(Ok(StoreUrl::S3 { .. })) => true,
            Some(Ok(StoreUrl::File { .. })) | None => false,
            Some(Err(e)) => {
                errors.push(e);
                // Judge the S3-only keys as if the URL were s3:// so every problem is reported.
                true
            }
        };
        if !is_s3 {
            for (key, set) in [
                ("artifacts.endpoint", self.endpoint.is_some()),
                ("artifacts.region", self.region.is_some()),
                ("artifacts.access_key_id", self.access_key_id.is_some()),
                (
                    "artifacts.secret_access_key",
                    self.secret_access_key.is_some(),
                ),
                ("artifacts.session_token", self.session_token.is_some()),
                ("artifacts.allow_http", self.allow_http.is_some()),
                ("artifacts.bulk_delete", self.bulk_delete.is_some()),
            ] {
                if set {
                    errors.push(ConfigError::new(
                        key,
                        "only applies to an s3:// artifacts.url; remove it or set url = \"s3://bucket/prefix\"",
                    ));
                }
            }
        }
        if let Some(endpoint) = &self.endpoint
            && let Err(e) = check_endpoint(endpoint, self.allow_http)
        {
            errors.push(e);
        }
        if let Some(region) = &self.region
            && (region.is_empty()
                || !region
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            errors.push(ConfigError::new(
                "artifacts.region",
                format!(
                    "{region:?} is not a region name (letters, digits and '-', like \"eu-west-1\")"
                ),
            ));
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => errors.push(ConfigError::new(
                "artifacts.secret_access_key",
                "missing: it is required when artifacts.access_key_id is set",
            )),
            (None, Some(_)) => errors.push(ConfigError::new(
                "artifacts.access_key_id",
                "missing: it is required when artifacts.secret_access_key is set",
            )),
            (Some(id), Some(_)) if id.trim().is_empty() => {
                errors.push(ConfigError::new("artifacts.access_key_id", "is empty"))
            }
            _ => {}
        }
        if self.session_token.is_some() && self.access_key_id.is_none() {
            errors.push(ConfigError::new(
                "artifacts.session_token",
                "only used together with artifacts.access_key_id and artifacts.secret_access_key",
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The parsed `url`; an error when it is unset or invalid.
    pub fn store_url(&self) -> Result<StoreUrl, ConfigError> {
        match &self.url {
            Some(url) => parse_url(url),
            None => Err(ConfigError::new(
                "artifacts.url",
                "not set (the daemon uses file://<data-dir>/artifacts when it is omitted)",
            )),
        }
    }
}

/// Parses `artifacts.url`.
pub fn parse_url(input: &str) -> Result<StoreUrl, ConfigError> {
    let err = |problem: String| ConfigError::new("artifacts.url", problem);
    let url = url::Url::parse(input).map_err(|e| {
        err(format!(
            "{input:?} is not a URL ({e}); use \"file:///absolute/dir\" or \"s3://bucket/prefix\""
        ))
    })?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err(format!(
            "{input:?}: a query or fragment is not allowed; put S3 settings in their own keys"
        )));
    }
    match url.scheme() {
        "file" => {
            if url
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(err(format!(
                    "{input:?}: a file:// URL cannot name a host; use file:///absolute/dir (three slashes)"
                )));
            }
            let root = url
                .to_file_path()
                .map_err(|()| err(format!("{input:?} is not an absolute local directory")))?;
            if root.parent().is_none() {
                return Err(err(format!(
                    "{input:?}: refusing to use the filesystem root as the artifact directory"
                )));
            }
            Ok(StoreUrl::File { root })
        }
        "s3" => {
            if !url.username().is_empty() || url.password().is_some() {
                return Err(err(
                    "credentials do not belong in the URL; use artifacts.access_key_id and \
                     artifacts.secret_access_key or the AWS_* environment"
                        .to_owned(),
                ));
            }
            if url.port().is_some() {
                return Err(err(format!(
                    "{input:?}: s3:// URLs name a bucket, not a server; put the server in artifacts.endpoint"
                )));
            }
            let bucket = url.host_str().unwrap_or_default();
            if bucket.is_empty()
                || bucket.len() > 255
                || !bucket
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                || bucket.contains("..")
            {
                return Err(err(format!(
                    "{input:?}: {bucket:?} is not a bucket name (letters, digits, '.', '-', '_'; like s3://my-bucket/prefix)"
                )));
            }
            let prefix = Path::from_url_path(url.path())
                .map_err(|e| err(format!("{input:?}: invalid key prefix: {e}")))?;
            Ok(StoreUrl::S3 {
                bucket: bucket.to_owned(),
                prefix,
            })
        }
        "gs" | "az" | "azure" | "abfs" | "abfss" | "adl" => Err(err(format!(
            "{input:?}: {}:// is not supported by this build (file:// and s3:// are)",
            url.scheme()
        ))),
        other => Err(err(format!(
            "{input:?}: unsupported scheme {other:?}; use \"file:///absolute/dir\" or \"s3://bucket/prefix\""
        ))),
    }
}

/// The endpoint as `artifacts.endpoint` must be, or the error naming the key.
fn check_endpoint(endpoint: &str, allow_http: Option<bool>) -> Result<(), ConfigError> {
    let bad = |problem: String| Err(ConfigError::new("artifacts.endpoint", problem));
    let url = match url::Url::parse(endpoint) {
        Ok(u) => u,
        Err(e) => {
            return bad(format!(
                "{endpoint:?} is not a URL ({e}); use e.g. \"https://minio.example:9000\""
            ));
        }
    };
    match url.scheme() {
        "https" | "http" if allow_http != Some(false) || url.scheme() == "https" => {}
        "http" => {
            return bad(format!(
                "{endpoint:?} is plain http but artifacts.allow_http = false; use https or set allow_http = true"
            ));
        }
        other => {
            return bad(format!(
                "{endpoint:?}: scheme {other:?} is not http or https"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return bad(format!("{endpoint:?} names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("credentials do not belong in the endpoint URL".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return bad(format!("{endpoint:?}: a query or fragment is not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> ArtifactsConfig {
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("{toml_text}: {e}"))
    }

    fn problems(c: &ArtifactsConfig) -> Vec<String> {
        c.validate()
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn accepts_file_and_s3_urls() {
        assert_eq!(
            parse_url("file:///var/lib/jw/artifacts"),
            Ok(StoreUrl::File {
                root: "/var/lib/jw/artifacts".into()
            })
        );
        assert_eq!(
            parse_url("file:///data/with%20space/"),
            Ok(StoreUrl::File {
                root: "/data/with space/".into()
            })
        );
        assert_eq!(
            parse_url("s3://my-bucket/team/jw"),
            Ok(StoreUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: Path::from("team/jw")
            })
        );
        assert_eq!(
            parse_url("s3://my-bucket"),
            Ok(StoreUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: Path::ROOT
            })
        );
        let full = cfg(r#"
            url = "s3://b/p"
            endpoint = "http://127.0.0.1:9000"
            region = "eu-west-1"
            access_key_id = "AK"
            secret_access_key = "SK"
            allow_http = true
            bulk_delete = false
        "#);
        assert_eq!(full.validate(), Ok(()));
        assert_eq!(cfg("").validate(), Ok(()), "an empty section is valid");
    }

    #[test]
    fn dot_segments_are_resolved_inside_the_bucket() {
        // The URL parser resolves `..` (also `%2E%2E`) before we see the path: it can never
        // leave the bucket.
        for url in [
            "s3://bucket/a/../b",
            "s3://bucket/a/%2E%2E/b",
            "s3://bucket/../../b",
        ] {
            assert_eq!(
                parse_url(url),
                Ok(StoreUrl::S3 {
                    bucket: "bucket".into(),
                    prefix: Path::from("b")
                }),
                "{url}"
            );
        }
    }

    #[test]
    fn rejects_bad_urls_naming_the_key() {
        for (url, needle) in [
            ("not a url", "not a URL"),
            ("relative/dir", "not a URL"),
            ("file://host/dir", "cannot name a host"),
            ("file:///", "filesystem root"),
            ("s3://", "not a bucket name"),
            ("s3://user:pw@bucket/p", "credentials"),
            ("s3://bucket:9000/p", "artifacts.endpoint"),
            ("s3://bucket/a//b", "invalid key prefix"),
            ("s3://bucket/p?region=x", "query"),
            ("s3://bu*cket/p", "not a bucket name"),
            ("gs://bucket/p", "not supported by this build"),
            ("ftp://host/p", "unsupported scheme"),
        ] {
            let c = ArtifactsConfig {
                url: Some(url.into()),
                ..Default::default()
            };
            let p = problems(&c);
            assert_eq!(p.len(), 1, "{url}: {p:?}");
            assert!(p[0].starts_with("artifacts.url: "), "{url}: {p:?}");
            assert!(p[0].contains(needle), "{url}: {p:?}");
        }
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let p = problems(&cfg(r#"
            url = "file:///tmp/x"
            endpoint = "ftp://x"
            access_key_id = "AK"
        "#));
        assert!(
            p.iter()
                .any(|e| e.starts_with("artifacts.endpoint: only applies to an s3://")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|e| e.starts_with("artifacts.endpoint: \"ftp://x\"")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|e| e.starts_with("artifacts.secret_access_key: missing")),
            "{p:?}"
        );

        let p = problems(&cfg(r#"
            url = "s3://b"
            endpoint = "http://minio:9000"
            allow_http = false
            region = "eu west"
            session_token = "t"
        "#));
        assert!(
            p.iter()
                .any(|e| e.starts_with("artifacts.endpoint: ") && e.contains("allow_http")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|e| e.starts_with("artifacts.region: ")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|e| e.starts_with("artifacts.session_token: ")),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<ArtifactsConfig>("urll = \"s3://b\"").expect_err("typo accepted");
        assert!(e.to_string().contains("urll"), "{e}");
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let c = cfg(r#"
            url = "s3://b"
            access_key_id = "AKIDVISIBLE"
            secret_access_key = "very-secret-value"
            session_token = "session-secret-value"
        "#);
        let dbg = format!("{c:?} {c:#?}");
        assert!(!dbg.contains("very-secret-value"), "{dbg}");
        assert!(!dbg.contains("session-secret-value"), "{dbg}");
        assert!(dbg.contains("redacted"), "{dbg}");
        assert_eq!(
            c.secret_access_key.as_ref().map(Secret::expose),
            Some("very-secret-value")
        );
    }

    #[test]
    fn default_url_is_a_directory_under_the_data_dir() {
        let url = default_url(std::path::Path::new("/var/lib/jobwarden")).expect("absolute");
        assert_eq!(url, "file:///var/lib/jobwarden/artifacts/");
        assert!(matches!(parse_url(&url), Ok(StoreUrl::File { .. })));
        assert!(default_url(std::path::Path::new("relative")).is_err());
        let unset = ArtifactsConfig::default()
            .store_url()
            .expect_err("unset url");
        assert_eq!(unset.key, "artifacts.url");
    }
}
