//! Partial artifacts on SIGTERM: a tarball in a file:// store and in S3 (moto).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use rustix::process::Signal;

use crate::harness::*;

/// Files the job "produced", relative path -> content.
fn make_artifacts(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let files: BTreeMap<String, Vec<u8>> = [
        ("report.txt", b"partial results\n".to_vec()),
        (
            "logs/step-1.log",
            (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect(),
        ),
        ("logs/deep/nested.json", b"{\"ok\":true}".to_vec()),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_owned(), c))
    .collect();
    for (path, content) in &files {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, content).expect("write");
    }
    files
}

/// The regular files in a .tar.gz, relative path -> content.
fn unpack(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in tar.entries().expect("a tar.gz") {
        let mut entry = entry.expect("entry");
        if entry.header().entry_type() == tar::EntryType::Regular {
            let path = entry.path().expect("path").display().to_string();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).expect("content");
            files.insert(path, content);
        }
    }
    files
}

/// Runs a job with `--artifacts-dir` and the given URL (plus `env`), SIGTERMs it, returns the
/// result and the files it was given.
fn terminate_with_artifacts(
    dir: &Path,
    id: &str,
    url: &str,
    env: &[(&str, String)],
) -> (Finished, BTreeMap<String, Vec<u8>>) {
    let artifacts = dir.join("artifacts");
    let files = make_artifacts(&artifacts);
    let ready = dir.join("ready");
    let mut cmd = init_command(id);
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .args(["--grace", "5", "--artifacts-dir"])
        .arg(&artifacts)
        .args([
            "--artifacts-url",
            url,
            "--",
            "sh",
            "-c",
            &trap_term_then_exit(&ready, 0),
        ]);
    let init = Running::start(cmd, dir);
    wait_for_file(&ready);
    init.signal(Signal::TERM);
    let done = init.wait(PATIENCE);
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    (done, files)
}

#[test]
fn partial_artifacts_land_in_a_file_store_created_on_demand() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("store/not/yet/there");
    let url = format!("file://{}", root.display());
    let (done, files) = terminate_with_artifacts(tmp.path(), "art-1", &url, &[]);

    let object = root.join("partial/art-1/artifacts.tar.gz");
    let archive = fs::read(&object).expect("the tarball is in the store");
    assert_eq!(unpack(&archive), files);
    let step = done.step("artifacts");
    assert_eq!(step["ok"], true, "{step}");
    assert_eq!(step["outcome"], "saved");
    assert!(
        done.stderr.contains(&format!(
            "jobwarden-init: artifacts: uploaded 3 files ({} bytes compressed) to {url}/partial/art-1/artifacts.tar.gz",
            archive.len()
        )),
        "{}",
        done.stderr
    );
}

#[test]
fn an_empty_artifacts_dir_uploads_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let artifacts = tmp.path().join("artifacts");
    fs::create_dir_all(artifacts.join("only/dirs")).expect("mkdir");
    let root = tmp.path().join("store");
    let ready = tmp.path().join("ready");
    let mut cmd = init_command("art-empty");
    cmd.args(["--grace", "5", "--artifacts-dir"])
        .arg(&artifacts)
        .arg("--artifacts-url")
        .arg(format!("file://{}", root.display()))
        .args(["--", "sh", "-c", &trap_term_then_exit(&ready, 0)]);
    let init = Running::start(cmd, tmp.path());
    wait_for_file(&ready);
    init.signal(Signal::TERM);
    let done = init.wait(PATIENCE);
    assert_eq!(done.code, Some(0));
    assert!(!root.join("partial/art-empty/artifacts.tar.gz").exists());
    let step = done.step("artifacts");
    assert_eq!(step["outcome"], "skipped", "{step}");
}

/// The moto server's settings, or `None` (after a loud notice) when it is not configured and
/// not required.
fn s3_settings() -> Option<(String, String)> {
    let endpoint = std::env::var("JOBWARDEN_TEST_S3_ENDPOINT").ok();
    let bucket = std::env::var("JOBWARDEN_TEST_S3_BUCKET").ok();
    match (endpoint, bucket) {
        (Some(endpoint), Some(bucket)) => Some((endpoint, bucket)),
        _ => {
            let required = std::env::var("JOBWARDEN_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
                || std::env::var_os("CI").is_some();
            let how = "start the S3 test server with `eval \"$(scripts/start-moto.sh)\"` \
                       (or run scripts/test.sh)";
            assert!(
                !required,
                "JOBWARDEN_TEST_S3_ENDPOINT/JOBWARDEN_TEST_S3_BUCKET are not set: {how}"
            );
            eprintln!("\n*** NOTICE: S3 test SKIPPED: no S3 test server; {how} ***\n");
            None
        }
    }
}

#[test]
fn partial_artifacts_land_in_s3() {
    let Some((endpoint, bucket)) = s3_settings() else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| "test".into());
    let (key_id, secret, region) = (
        var("AWS_ACCESS_KEY_ID"),
        var("AWS_SECRET_ACCESS_KEY"),
        std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let prefix = format!("jobwarden-init-tests/{}", std::process::id());
    let url = format!("s3://{bucket}/{prefix}");
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", secret.clone()),
        ("AWS_REGION", region.clone()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ];
    let (done, files) = terminate_with_artifacts(tmp.path(), "art-s3", &url, &env);
    let step = done.step("artifacts");
    assert_eq!(step["ok"], true, "{step}");

    // Read it back through object_store, with short retries so a broken server fails fast.
    let store = AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_bucket_name(&bucket)
        .with_access_key_id(key_id)
        .with_secret_access_key(secret)
        .with_region(region)
        .with_allow_http(true)
        .with_retry(object_store::RetryConfig {
            max_retries: 1,
            retry_timeout: Duration::from_secs(2),
            ..Default::default()
        })
        .build()
        .expect("S3 client");
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let location =
        object_store::path::Path::from(format!("{prefix}/partial/art-s3/artifacts.tar.gz"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let archive = runtime.block_on(async {
        let bytes = store
            .get(&location)
            .await
            .expect("the tarball is in S3")
            .bytes()
            .await
            .expect("read the tarball");
        store.delete(&location).await.expect("clean up");
        bytes
    });
    assert_eq!(unpack(&archive), files);
    assert!(
        done.stderr
            .contains(&format!("to {url}/partial/art-s3/artifacts.tar.gz")),
        "{}",
        done.stderr
    );
}
