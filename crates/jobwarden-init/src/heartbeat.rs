//! Heartbeats: `POST <url>` with `{"job_id": ...}` while the command runs.
//!
//! Runs as its own task and never touches the child: a failed or hung request only delays the
//! next heartbeat. Failures are retried quietly (1 s, 2 s, 4 s, ..., never slower than the
//! interval); one line is logged when heartbeats start failing and one when they recover.

use std::time::Duration;

use tokio::time::Instant;
use url::Url;

use crate::job_id::JobId;
use crate::timing;

/// Longest a single heartbeat request may take.
const MAX_REQUEST_TIME: Duration = Duration::from_secs(10);

/// Sends heartbeats until the task is aborted.
pub async fn run(url: Url, id: JobId, every: Duration) {
    let request_time = every.min(MAX_REQUEST_TIME);
    let client = match reqwest::Client::builder()
        .timeout(request_time)
        .connect_timeout(request_time)
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            eprintln!("jobwarden-init: heartbeat: disabled, cannot set up an HTTP client: {err}");
            return;
        }
    };
    let body = serde_json::json!({ "job_id": id.as_str() });
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        let sent = client
            .post(url.clone())
            .json(&body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        match sent {
            Ok(_) if failures > 0 => {
                eprintln!(
                    "jobwarden-init: heartbeat: POST {url} works again after {failures} failed attempts"
                );
                failures = 0;
            }
            Ok(_) => {}
            Err(err) => {
                if failures == 0 {
                    eprintln!(
                        "jobwarden-init: heartbeat: POST {url} failed ({err}); retrying quietly"
                    );
                }
                failures = failures.saturating_add(1);
            }
        }
        tokio::time::sleep_until(started + timing::heartbeat_delay(every, failures)).await;
    }
}
