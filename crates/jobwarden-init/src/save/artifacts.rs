//! Saves the job's partial artifacts: a `.tar.gz` of `--artifacts-dir`, streamed to
//! `<artifacts-url>/partial/<job-id>/artifacts.tar.gz` through `object_store` (file:// or s3://).
//!
//! The archive is built on a blocking thread and handed over in chunks through a bounded
//! channel to an `object_store` `BufWriter` (one PUT for small archives, a multipart upload
//! past `PART_SIZE`), so memory stays bounded whatever the size of the directory. The object
//! appears only when the upload completes: an archive stopped by the budget is never
//! published half-written. (An S3 multipart upload that was stopped is left for the bucket's
//! `AbortIncompleteMultipartUpload` lifecycle rule.)
//!
//! Files are archived with the size they had when they were opened, padded or cut to it, so a
//! job still writing while it is saved cannot corrupt the archive.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use url::Url;

use super::{Done, Progress, count};
use crate::error::{Error, Result};
use crate::job_id::JobId;

/// Upload part size (S3's minimum part size): up to this much is buffered before the upload
/// switches from one PUT to a multipart upload.
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Size of the chunks handed from the archiving thread to the uploader, and how many may wait.
const CHUNK_SIZE: usize = 256 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;

/// `--artifacts-dir` and where its archive goes.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub dir: PathBuf,
    pub target: Target,
}

/// A parsed `--artifacts-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `file:///some/dir`: a directory, created if missing.
    File { root: PathBuf },
    /// `s3://bucket/optional/prefix`, configured from the `AWS_*` environment.
    S3 { bucket: String, prefix: ObjectPath },
}

impl Target {
    /// Parses the URL; on failure returns what is wrong with it.
    pub fn parse(input: &str) -> std::result::Result<Target, String> {
        let url = Url::parse(input).map_err(|e| format!("not a URL ({e})"))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err("a query or fragment is not supported".into());
        }
        match url.scheme() {
            "file" => {
                let root = url
                    .to_file_path()
                    .map_err(|()| "a file:// URL must hold an absolute local path".to_owned())?;
                Ok(Target::File { root })
            }
            "s3" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or("an s3:// URL needs a bucket: s3://bucket/prefix")?
                    .to_owned();
                let prefix = ObjectPath::from_url_path(url.path())
                    .map_err(|e| format!("bad key prefix: {e}"))?;
                Ok(Target::S3 { bucket, prefix })
            }
            other => Err(format!(
                "unsupported scheme {other:?}: use file:///absolute/dir or s3://bucket/prefix"
            )),
        }
    }

    /// The archive's key inside the store.
    pub fn location(&self, id: &JobId) -> ObjectPath {
        let prefix = match self {
            Target::File { .. } => ObjectPath::default(),
            Target::S3 { prefix, .. } => prefix.clone(),
        };
        prefix
            .join("partial")
            .join(id.as_str())
            .join("artifacts.tar.gz")
    }

    /// The archive's full URL, for log lines.
    pub fn describe(&self, id: &JobId) -> String {
        match self {
            Target::File { root } => format!(
                "file://{}/{}",
                root.display().to_string().trim_end_matches('/'),
                self.location(id)
            ),
            Target::S3 { bucket, .. } => format!("s3://{bucket}/{}", self.location(id)),
        }
    }

    /// Checks what can be checked before the job starts (no network, nothing created).
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            Target::File { .. } => Ok(()),
            Target::S3 { bucket, .. } => s3_builder(bucket, Duration::from_secs(30))
                .build()
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }

    /// Opens the store, creating a file:// root. Requests and retries are bounded by `budget`.
    async fn open(&self, budget: Duration) -> Result<Arc<dyn ObjectStore>> {
        let store_err = |source| Error::Store {
            url: self.to_string(),
            source,
        };
        match self {
            Target::File { root } => {
                tokio::fs::create_dir_all(root)
                    .await
                    .map_err(|source| Error::Archive {
                        dir: root.clone(),
                        source,
                    })?;
                let store = LocalFileSystem::new_with_prefix(root).map_err(store_err)?;
                Ok(Arc::new(store))
            }
            Target::S3 { bucket, .. } => {
                let store = s3_builder(bucket, budget).build().map_err(store_err)?;
                Ok(Arc::new(store))
            }
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::File { root } => write!(f, "file://{}", root.display()),
            Target::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// An S3 client for `bucket` whose requests and retries fit in `budget`, then configured from
/// the `AWS_*` environment exactly as `AmazonS3Builder::from_env` does (endpoint, credentials,
/// region, `AWS_ALLOW_HTTP`, ...). Path-style requests unless
/// `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`, which suits S3-compatible servers.
fn s3_builder(bucket: &str, budget: Duration) -> AmazonS3Builder {
    let client = ClientOptions::new()
        .with_timeout(budget)
        .with_connect_timeout(budget.min(Duration::from_secs(5)));
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: budget,
        ..RetryConfig::default()
    };
    let mut builder = AmazonS3Builder::new()
        .with_client_options(client)
        .with_retry(retry)
        .with_virtual_hosted_style_request(false);
    for (key, value) in std::env::vars() {
        if key.starts_with("AWS_")
            && let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
        {
            builder = builder.with_config(key, value);
        }
    }
    builder.with_bucket_name(bucket)
}

pub async fn save(
    artifacts: &Artifacts,
    id: &JobId,
    stop_at: Instant,
    progress: Progress,
) -> Result<Done> {
    let dir = &artifacts.dir;
    progress.set("checking the artifacts directory");
    match tokio::fs::metadata(dir).await {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::Archive {
                dir: dir.clone(),
                source: io::Error::other("not a directory"),
            });
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Ok(Done::skipped(format!("{} does not exist", dir.display())));
        }
        Err(source) => {
            return Err(Error::Archive {
                dir: dir.clone(),
                source,
            });
        }
    }

    progress.set("opening the object store");
    let target = &artifacts.target;
    let store = target
        .open(stop_at.saturating_duration_since(Instant::now()))
        .await?;
    let destination = target.describe(id);

    progress.set("archiving and uploading");
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let archive_dir = dir.clone();
    let archiver =
        tokio::task::spawn_blocking(move || write_archive(&archive_dir, ChunkWriter::new(tx)));
    let mut writer =
        BufWriter::with_capacity(store, target.location(id), PART_SIZE).with_max_concurrency(2);
    let mut compressed: u64 = 0;
    let mut upload = Ok(());
    while let Some(chunk) = rx.recv().await {
        compressed += chunk.len() as u64;
        if let Err(err) = writer.write_all(&chunk).await {
            upload = Err(err);
            break;
        }
    }
    drop(rx); // stops the archiver if the upload failed
    let archived = match archiver.await {
        Ok(result) => result,
        Err(join) => Err(io::Error::other(format!(
            "the archiving thread failed: {join}"
        ))),
    };
    let upload_err = |source: io::Error| Error::Upload {
        url: destination.clone(),
        source,
    };
    let stats = match (upload, archived) {
        (Err(err), _) => {
            let _ = writer.abort().await;
            return Err(upload_err(err));
        }
        (Ok(()), Err(source)) => {
            let _ = writer.abort().await;
            return Err(Error::Archive {
                dir: dir.clone(),
                source,
            });
        }
        (Ok(()), Ok(stats)) => stats,
    };
    if stats.files == 0 {
        let _ = writer.abort().await;
        return Ok(Done::skipped(format!("no files in {}", dir.display())));
    }
    progress.set("completing the upload");
    writer.shutdown().await.map_err(upload_err)?;
    let skipped = match stats.skipped {
        0 => String::new(),
        n => format!(", left out unreadable or special entries: {n}"),
    };
    Ok(Done::saved(format!(
        "uploaded {} ({compressed} bytes compressed) to {destination}{skipped}",
        count(stats.files, "file")
    )))
}

/// What went into the archive.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    pub files: u64,
    pub skipped: u64,
}

/// Writes a gzipped tar of everything under `dir` (paths relative to it) to `out`.
///
/// Regular files, directories and symlinks (as links, never followed) are archived. Entries
/// that vanish or cannot be read while walking, sockets, FIFOs and devices are counted in
/// `skipped`; a failure to write the archive itself is an error.
pub fn write_archive(dir: &Path, out: impl Write) -> io::Result<ArchiveStats> {
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::fast()));
    tar.follow_symlinks(false);
    let mut stats = ArchiveStats::default();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let entries = match fs::read_dir(dir.join(&rel)) {
            Ok(entries) => entries,
            Err(err) if rel.as_os_str().is_empty() => return Err(err),
            Err(_) => {
                stats.skipped += 1;
                continue;
            }
        };
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let abs = dir.join(&rel);
            let Ok(meta) = fs::symlink_metadata(&abs) else {
                stats.skipped += 1;
                continue;
            };
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            if meta.is_dir() {
                header.set_size(0);
                tar.append_data(&mut header, &rel, io::empty())?;
                pending.push(rel);
            } else if meta.is_file() {
                let Ok(file) = fs::File::open(&abs) else {
                    stats.skipped += 1;
                    continue;
                };
                let size = file.metadata().map_or(meta.len(), |m| m.len());
                header.set_size(size);
                // Exactly `size` bytes: cut if the file grew, zero-padded if it shrank.
                let data = file.take(size).chain(io::repeat(0)).take(size);
                tar.append_data(&mut header, &rel, data)?;
                stats.files += 1;
            } else if meta.file_type().is_symlink() {
                let Ok(link) = fs::read_link(&abs) else {
                    stats.skipped += 1;
                    continue;
                };
                header.set_size(0);
                tar.append_link(&mut header, &rel, link)?;
            } else {
                stats.skipped += 1;
            }
        }
    }
    tar.into_inner()?.finish()?.flush()?;
    Ok(stats)
}

/// Hands the archive to the async uploader in `CHUNK_SIZE` pieces; fails with `BrokenPipe`
/// once the uploader has gone (budget used up, upload failed).
struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Vec<u8>>,
}

impl ChunkWriter {
    fn new(tx: mpsc::Sender<Vec<u8>>) -> ChunkWriter {
        ChunkWriter {
            buf: Vec::with_capacity(CHUNK_SIZE),
            tx,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_SIZE));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload has stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK_SIZE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flate2::read::GzDecoder;

    use super::*;

    fn unpack(archive: &[u8]) -> BTreeMap<String, Option<Vec<u8>>> {
        let mut entries = BTreeMap::new();
        let mut tar = tar::Archive::new(GzDecoder::new(archive));
        for entry in tar.entries().expect("readable archive") {
            let mut entry = entry.expect("readable entry");
            let path = entry.path().expect("entry path").display().to_string();
            let content = match entry.header().entry_type() {
                tar::EntryType::Regular => {
                    let mut buf = Vec::new();
                    entry.read_to_end(&mut buf).expect("entry content");
                    Some(buf)
                }
                tar::EntryType::Symlink => Some(
                    entry
                        .link_name()
                        .expect("link name")
                        .expect("symlink target")
                        .display()
                        .to_string()
                        .into_bytes(),
                ),
                _ => None,
            };
            entries.insert(path, content);
        }
        entries
    }

    #[test]
    fn archives_files_dirs_and_symlinks_relative_to_the_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        fs::create_dir_all(dir.join("logs/deep")).expect("mkdir");
        fs::create_dir(dir.join("empty")).expect("mkdir");
        fs::write(dir.join("result.txt"), "42\n").expect("write");
        fs::write(dir.join("logs/deep/run.log"), vec![7u8; 300_000]).expect("write");
        std::os::unix::fs::symlink("result.txt", dir.join("latest")).expect("symlink");

        let mut out = Vec::new();
        let stats = write_archive(dir, &mut out).expect("archive");
        assert_eq!(
            stats,
            ArchiveStats {
                files: 2,
                skipped: 0
            }
        );

        let entries = unpack(&out);
        let names: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "empty",
                "latest",
                "logs",
                "logs/deep",
                "logs/deep/run.log",
                "result.txt"
            ]
        );
        assert_eq!(entries["result.txt"].as_deref(), Some(&b"42\n"[..]));
        assert_eq!(
            entries["logs/deep/run.log"].as_deref(),
            Some(&[7u8; 300_000][..])
        );
        assert_eq!(entries["latest"].as_deref(), Some(&b"result.txt"[..]));
    }

    #[test]
    fn an_empty_directory_has_no_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stats = write_archive(tmp.path(), io::sink()).expect("archive");
        assert_eq!(stats.files, 0);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(write_archive(&tmp.path().join("nope"), io::sink()).is_err());
    }

    #[test]
    fn parses_file_and_s3_urls_into_keys() {
        let id = JobId::parse("job-9").expect("valid id");
        let file = Target::parse("file:///var/lib/jw").expect("file url");
        assert_eq!(
            file,
            Target::File {
                root: "/var/lib/jw".into()
            }
        );
        assert_eq!(
            file.location(&id).as_ref(),
            "partial/job-9/artifacts.tar.gz"
        );
        assert_eq!(
            file.describe(&id),
            "file:///var/lib/jw/partial/job-9/artifacts.tar.gz"
        );

        let s3 = Target::parse("s3://bucket/some/prefix/").expect("s3 url");
        assert_eq!(
            s3.location(&id).as_ref(),
            "some/prefix/partial/job-9/artifacts.tar.gz"
        );
        assert_eq!(
            s3.describe(&id),
            "s3://bucket/some/prefix/partial/job-9/artifacts.tar.gz"
        );
        let bare = Target::parse("s3://bucket").expect("s3 url");
        assert_eq!(
            bare.location(&id).as_ref(),
            "partial/job-9/artifacts.tar.gz"
        );
    }

    #[test]
    fn rejects_urls_it_cannot_write_to() {
        for bad in [
            "/plain/path",
            "http://host/x",
            "s3:///prefix",
            "file://host/x",
            "s3://b/p?x=1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
