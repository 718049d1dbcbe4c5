//! Heartbeats reach an HTTP server; a dead or hung one does not affect the command.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

/// One request the test server received.
#[derive(Debug, Clone)]
struct Request {
    head: String,
    body: String,
}

/// A tiny HTTP server on loopback. `answer == false` accepts and never responds (a hung
/// server). Stops when dropped, and in any case after 30 s.
struct Server {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(answer: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!(
            "http://{}/v1/jobs/hb/heartbeat",
            listener.local_addr().expect("addr")
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, halt) = (requests.clone(), stop.clone());
        thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(30);
            let mut held = Vec::new();
            while !halt.load(Ordering::Relaxed) && Instant::now() < give_up {
                match listener.accept() {
                    Ok((stream, _)) if answer => {
                        if let Some(req) = serve(stream) {
                            reqs.lock().expect("lock").push(req);
                        }
                    }
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server {
            url,
            requests,
            stop,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: TcpStream) -> Option<Request> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, body_start) = loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&data[..end]).into_owned(), end + 4);
        }
    };
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while data.len() < body_start + length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&data[body_start..]).into_owned();
    stream
        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        .ok()?;
    Some(Request { head, body })
}

#[test]
fn heartbeats_reach_the_server_while_the_command_runs() {
    let server = Server::start(true);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = init_command("hb-1");
    cmd.env("FLOWFORGE_HEARTBEAT_URL", &server.url)
        .env("FLOWFORGE_HEARTBEAT_EVERY", "1s")
        .args(["--", "sh", "-c", "sleep 2.5"]);
    let done = Running::start(cmd, tmp.path()).wait(PATIENCE);
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);

    let requests = server.requests();
    // At start, after 1 s and after 2 s; allow one less for a slow machine.
    assert!((2..=4).contains(&requests.len()), "{requests:?}");
    for req in &requests {
        assert!(
            req.head.starts_with("POST /v1/jobs/hb/heartbeat HTTP/1.1"),
            "{req:?}"
        );
        let body: serde_json::Value = serde_json::from_str(&req.body).expect("JSON body");
        assert_eq!(body, serde_json::json!({"job_id": "hb-1"}));
    }
    assert!(
        !done.stderr.contains("heartbeat"),
        "no noise when all is well: {}",
        done.stderr
    );
}

/// Runs `sh -c script` with heartbeats to `url` every `every` seconds; returns the result and
/// how long the run took.
fn run_with_heartbeat(url: &str, every: &str, script: &str) -> (Finished, Duration) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = init_command("hb-bad");
    cmd.args(["--heartbeat-url", url, "--heartbeat-every", every, "--"])
        .args(["sh", "-c", script]);
    let started = Instant::now();
    let done = Running::start(cmd, tmp.path()).wait(PATIENCE);
    (done, started.elapsed())
}

#[test]
fn a_dead_heartbeat_server_is_retried_quietly_and_does_not_affect_the_command() {
    let url = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}/heartbeat", listener.local_addr().expect("addr"))
    }; // the listener is closed again: connections are refused
    // Attempts at about 0 s, 1 s and 2 s all fail.
    let (done, took) = run_with_heartbeat(&url, "1", "sleep 2.5; exit 7");
    assert_eq!(done.code, Some(7), "stderr:\n{}", done.stderr);
    assert_eq!(done.summary()["exit_code"], 7);
    assert!(took < Duration::from_secs(5), "exit delayed to {took:?}");
    // One line when heartbeats start failing, not one per attempt.
    assert_eq!(
        done.stderr.matches("heartbeat:").count(),
        1,
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("retrying quietly"), "{}", done.stderr);
}

#[test]
fn a_hung_heartbeat_server_does_not_delay_the_exit() {
    let hung = Server::start(false);
    // The first request hangs for its whole 5 s timeout; the command ends after 1 s.
    let (done, took) = run_with_heartbeat(&hung.url, "5", "sleep 1; exit 7");
    assert_eq!(done.code, Some(7), "stderr:\n{}", done.stderr);
    assert!(
        took < Duration::from_millis(3500),
        "exit waited for the heartbeat: {took:?}"
    );
}
