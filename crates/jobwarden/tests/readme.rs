//! The README's commands, run, so that it cannot go stale.
//!
//! Every command of every fenced `sh` block is classified and checked; a command this test
//! does not know how to check fails it:
//! - `jobwarden …` (or `cargo run --release --bin jobwarden -- …`): `run` starts a real daemon
//!   exactly as written, in a temporary directory, with `--listen 127.0.0.1:0` added; the other
//!   local commands run against it (`JOBWARDEN_SERVER`) and must exit 0; `demo` runs and takes
//!   about as long as the README says; `manifest job` runs offline and prints a Job;
//!   `manifest webhook` runs offline and prints the two admissionregistration.k8s.io/v1
//!   configurations;
//! - `openssl …` (the admission webhook's certificate) runs as written in the sandbox, so the
//!   files the commands after it name exist;
//!   a `run` that needs a cluster or another server is parsed by the CLI's own clap
//!   definition.
//! - A block that sets `jw=target/release/jobwarden` runs as one `sh -e` script, with that path
//!   being the binary under test.
//! - `kubectl …`: every file it names with `-f` and every directory with `-k` exists in the
//!   repository. A block that uses kubectl (a walkthrough on a cluster) is checked command by
//!   command: `$jw manifest job … | kubectl apply -f -` renders the Job offline, any other `$jw`
//!   command is parsed by the CLI's clap definition.
//! - `docker build` / `docker push`: the Dockerfile exists, and `.ci/run` lints it
//!   (`scripts/lint-deploy.sh`, which also checks the Dockerfile builds as the README does).
//! - `bash scripts/test.sh`: `.ci/run` runs it.
//!
//! Besides: the Command line synopsis names every subcommand, every flag and every value of
//! `--runtime` and `--output` the CLI has, and the configuration file the README calls
//! "complete, with every default" parses into exactly the defaults.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use common::BIN;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn readme() -> String {
    std::fs::read_to_string(repo_root().join("README.md")).expect("README.md")
}

/// The fenced blocks of `md`: (language, body, line of the opening fence).
fn blocks(md: &str) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    let mut open: Option<(String, String, usize)> = None;
    for (i, line) in md.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => open = Some((lang.trim().to_owned(), String::new(), i + 1)),
            (Some(_), Some(_)) => out.extend(open.take()),
            (Some((_, body, _)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// The commands of an `sh` block: continuation lines joined, comments dropped.
fn commands(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in body.lines() {
        let line = match line.find("  #") {
            Some(at) => &line[..at],
            None => line,
        }
        .trim_end();
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                out.push(current.trim().to_owned());
                current.clear();
            }
        }
    }
    out
}

/// A directory where the README's commands find the binary under test: `jobwarden` on the
/// `PATH` and `target/release/jobwarden` below the working directory.
struct Sandbox {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    server: Option<String>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("jw-readme-")
            .tempdir()
            .expect("tempdir");
        for link in [
            dir.path().join("bin/jobwarden"),
            dir.path().join("target/release/jobwarden"),
        ] {
            std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
            std::os::unix::fs::symlink(BIN, &link).expect("symlink");
        }
        Sandbox {
            dir,
            daemon: None,
            server: None,
        }
    }

    fn sh(&self, script: &str) -> Command {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-e", "-c", script])
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env_remove("JOBWARDEN_CONFIG")
            .env_remove("JOBWARDEN_STORE")
            .env_remove("JOBWARDEN_TOKEN")
            .stdin(Stdio::null());
        match &self.server {
            Some(url) => cmd.env("JOBWARDEN_SERVER", url),
            None => cmd.env_remove("JOBWARDEN_SERVER"),
        };
        cmd
    }

    /// Runs `script` with `sh -e`; its output, or a panic naming the README line.
    fn ok(&self, script: &str, line: usize) -> String {
        let out = self.sh(script).output().expect("sh");
        assert!(
            out.status.success(),
            "README.md:{line}: `{script}` failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `jobwarden run …` as written, on a free port; waits for its address.
    fn start_daemon(&mut self, command: &str, line: usize) {
        assert!(self.daemon.is_none(), "README.md:{line}: a second daemon");
        let log = self.dir.path().join("daemon.log");
        let child = self
            .sh(&format!("exec {command} --listen 127.0.0.1:0"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn the daemon");
        self.daemon = Some(child);
        let deadline = Instant::now() + common::WAIT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("jobwarden listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().expect("address");
                self.server = Some(format!("http://{addr}"));
                return;
            }
            assert!(
                Instant::now() < deadline,
                "README.md:{line}: `{command}` did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The README's example job sleeps 600 s: end every process whose cwd is in the
        // sandbox (by pid, with its process group).
        common::kill_processes_under(self.dir.path());
    }
}

/// `words` of a shell command line, split by the shell itself.
fn shell_words(sandbox: &Sandbox, command: &str) -> Vec<String> {
    let out = sandbox.ok(
        &format!("for a in {command}; do printf '%s\\0' \"$a\"; done"),
        0,
    );
    out.split('\0')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The demo's length as the README states it ("a story of about N seconds").
fn demo_seconds(md: &str) -> u64 {
    md.split("a story of about ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the README says how long the demo takes: \"a story of about N seconds\"")
}

#[test]
fn every_readme_command_runs() {
    let md = readme();
    let mut sandbox = Sandbox::new();
    let mut checked = 0;
    let mut ran_demo = false;
    let mut assigned: Vec<String> = Vec::new();
    for (lang, body, line) in blocks(&md) {
        if lang != "sh" {
            continue;
        }
        let on_a_cluster = body.contains("kubectl ");
        if body
            .lines()
            .any(|l| l.starts_with("jw=target/release/jobwarden"))
            && !on_a_cluster
        {
            assert!(
                sandbox.server.is_some(),
                "README.md:{line}: the daemon is not started before this block"
            );
            let out = sandbox.ok(&body, line);
            assert!(out.contains("ID") && out.contains("soft_kill"), "{out}");
            checked += commands(&body).len();
            continue;
        }
        for command in commands(&body) {
            checked += 1;
            // `VAR=$(command)`: the command inside is what is checked; later commands get a
            // job id for `$VAR`.
            let command = match command.split_once("=$(") {
                Some((var, inner))
                    if !var.is_empty()
                        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && inner.ends_with(')') =>
                {
                    assigned.push(format!("${var}"));
                    inner[..inner.len() - 1].to_owned()
                }
                _ => assigned.iter().fold(command, |c, v| {
                    c.replace(v.as_str(), "01jexample0000000000000000")
                }),
            };
            let command = match command
                .strip_prefix("cargo run --release --bin jobwarden -- ")
                .or_else(|| command.strip_prefix("$jw "))
            {
                Some(args) => format!("jobwarden {args}"),
                None => command,
            };
            if command.starts_with("jw=") {
                continue;
            }
            if command.starts_with("openssl ") {
                sandbox.ok(&command, line);
            } else if command == "bash scripts/test.sh" {
                let ci = std::fs::read_to_string(repo_root().join(".ci/run")).expect(".ci/run");
                assert!(
                    ci.lines().any(|l| l.trim() == command),
                    "README.md:{line}: `{command}` is not run by .ci/run"
                );
            } else if command.starts_with("docker build ") || command.starts_with("docker push ") {
                assert!(
                    repo_root().join("Dockerfile").is_file(),
                    "README.md:{line}: `{command}` needs the Dockerfile"
                );
                let ci = std::fs::read_to_string(repo_root().join(".ci/run")).expect(".ci/run");
                assert!(
                    ci.lines()
                        .any(|l| l.trim() == "bash scripts/lint-deploy.sh"),
                    "README.md:{line}: the image build is not linted by .ci/run"
                );
            } else if command.starts_with("kubectl ")
                || command.starts_with("export ") && command.contains("$(kubectl")
            {
                let words: Vec<&str> = command.split_whitespace().collect();
                for w in words.windows(2).filter(|w| w[0] == "-f" && w[1] != "-") {
                    assert!(
                        repo_root().join(w[1]).is_file(),
                        "README.md:{line}: `{command}` names {}, which does not exist",
                        w[1]
                    );
                }
                for w in words.windows(2).filter(|w| w[0] == "-k") {
                    assert!(
                        repo_root().join(w[1]).join("kustomization.yaml").is_file(),
                        "README.md:{line}: `{command}` names {}, which is no kustomization",
                        w[1]
                    );
                }
            } else if let Some(args) = command.strip_prefix("jobwarden ") {
                let (jobwarden, _kubectl) = match command.split_once(" | kubectl ") {
                    Some((j, k)) => (j.to_owned(), Some(k)),
                    None => (command.clone(), None),
                };
                let sub = args.split_whitespace().next().unwrap_or_default();
                if sub == "run"
                    && (args.contains("--store postgres") || args.contains("kubernetes"))
                {
                    // Needs a server or a cluster: the CLI must accept it as written.
                    let words = shell_words(&sandbox, &jobwarden);
                    if let Err(e) = jobwarden::cli::Cli::try_parse_from(&words) {
                        panic!("README.md:{line}: `{command}` does not parse: {e}");
                    }
                } else if sub == "run" {
                    sandbox.start_daemon(&jobwarden, line);
                } else if sub == "demo" {
                    let started = Instant::now();
                    let out = sandbox.ok(&jobwarden, line);
                    let took = started.elapsed().as_secs();
                    let said = demo_seconds(&md);
                    assert!(
                        took + 2 >= said && took <= said + 4,
                        "README.md: the demo is said to take about {said} s; it took {took} s"
                    );
                    assert!(out.contains("audit log ("), "{out}");
                    ran_demo = true;
                } else if sub == "manifest" && args.split_whitespace().nth(1) == Some("webhook") {
                    let out = sandbox.ok(&jobwarden, line);
                    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out)
                        .unwrap_or_else(|e| panic!("README.md:{line}: not YAML ({e}):\n{out}"));
                    let [mutating, validating] = docs.as_slice() else {
                        panic!("README.md:{line}: not two configurations:\n{out}");
                    };
                    use k8s_openapi::api::admissionregistration::v1 as ar;
                    let m: ar::MutatingWebhookConfiguration =
                        serde_json::from_value(mutating.clone()).unwrap_or_else(|e| {
                            panic!("README.md:{line}: not a MutatingWebhookConfiguration ({e})")
                        });
                    let v: ar::ValidatingWebhookConfiguration =
                        serde_json::from_value(validating.clone()).unwrap_or_else(|e| {
                            panic!("README.md:{line}: not a ValidatingWebhookConfiguration ({e})")
                        });
                    assert!(m.webhooks.is_some_and(|w| w.len() == 1), "README.md:{line}");
                    assert!(v.webhooks.is_some_and(|w| w.len() == 1), "README.md:{line}");
                } else if sub == "manifest" {
                    // Paths in the README are relative to the repository.
                    let root = format!("{}/deploy/", repo_root().display());
                    let out = sandbox.ok(&jobwarden.replace(" deploy/", &format!(" {root}")), line);
                    let job: k8s_openapi::api::batch::v1::Job = serde_saphyr::from_str(&out)
                        .unwrap_or_else(|e| panic!("README.md:{line}: not a Job ({e}):\n{out}"));
                    assert!(
                        job.metadata
                            .labels
                            .is_some_and(|l| l.contains_key("job-id"))
                    );
                } else if on_a_cluster {
                    // A walkthrough's commands talk to a port-forwarded cluster: each must be
                    // a command line the CLI accepts.
                    for part in jobwarden.split(" && ") {
                        let part = part.trim().replacen("$jw ", "jobwarden ", 1);
                        let words = shell_words(&sandbox, &part);
                        if let Err(e) = jobwarden::cli::Cli::try_parse_from(&words) {
                            panic!("README.md:{line}: `{part}` does not parse: {e}");
                        }
                    }
                } else {
                    assert!(
                        sandbox.server.is_some(),
                        "README.md:{line}: `{command}` comes before any `jobwarden run`"
                    );
                    sandbox.ok(&jobwarden, line);
                }
            } else {
                panic!(
                    "README.md:{line}: `{command}` is not checked by tests/readme.rs: run it \
                     here, or say how it is checked"
                );
            }
        }
    }
    assert!(checked >= 15, "only {checked} README commands found");
    assert!(
        ran_demo,
        "the README shows no `jobwarden demo` command to run"
    );
}

/// The documentation points only at what a user of this repository has: no `../shared/`, and
/// every relative Markdown link resolves.
#[test]
fn the_docs_point_only_at_files_in_the_repository() {
    let root = repo_root();
    let mut docs = vec![
        root.join("README.md"),
        root.join("BENCHMARKS.md"),
        root.join("crates/jobwarden-init/README.md"),
    ];
    let mut dirs = vec![root.join("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("deploy/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                docs.push(path);
            }
        }
    }
    for doc in docs {
        let text = std::fs::read_to_string(&doc).expect("doc");
        assert!(
            !text.contains("../shared"),
            "{} mentions ../shared/, which users do not have",
            doc.display()
        );
        for link in text.split("](").skip(1) {
            let target = link.split(')').next().unwrap_or_default();
            if target.starts_with('#') || target.contains("://") {
                continue;
            }
            let path = doc
                .parent()
                .expect("dir")
                .join(target.split('#').next().unwrap_or_default());
            assert!(
                path.exists(),
                "{}: link to {target} does not resolve",
                doc.display()
            );
        }
    }
}

/// The Command line section names every subcommand, every flag and every value of the
/// CLI's enumerated flags.
#[test]
fn the_command_line_synopsis_matches_the_cli() {
    let md = readme();
    let synopsis = md
        .split("## Command line")
        .nth(1)
        .and_then(|s| blocks(s).into_iter().next())
        .map(|(_, body, _)| body)
        .expect("a block under ## Command line");
    let cli = jobwarden::cli::Cli::command();
    let mut leaves = Vec::new();
    let mut stack: Vec<(String, &clap::Command)> = cli
        .get_subcommands()
        .map(|c| (c.get_name().to_owned(), c))
        .collect();
    while let Some((path, cmd)) = stack.pop() {
        if cmd.has_subcommands() {
            stack.extend(
                cmd.get_subcommands()
                    .map(|c| (format!("{path} {}", c.get_name()), c)),
            );
        } else {
            leaves.push((path, cmd));
        }
    }
    let mut missing = BTreeSet::new();
    for (path, cmd) in &leaves {
        let head = format!("jobwarden {path}");
        let Some(start) = synopsis
            .lines()
            .position(|l| l == head || l.starts_with(&format!("{head} ")))
        else {
            missing.insert(format!("`{head}`"));
            continue;
        };
        let section: String = synopsis
            .lines()
            .skip(start)
            .enumerate()
            .take_while(|(i, l)| *i == 0 || !l.starts_with("jobwarden "))
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            // --server and $JOBWARDEN_SERVER are described once, below the block.
            if matches!(long, "help" | "version" | "server") {
                continue;
            }
            if !section.contains(&format!("--{long}")) {
                missing.insert(format!("`{head} --{long}`"));
            }
            if matches!(long, "runtime" | "output") {
                for value in arg.get_possible_values() {
                    if !section.contains(value.get_name()) {
                        missing.insert(format!("`{head} --{long} {}`", value.get_name()));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the README's Command line section lacks {missing:?}:\n{synopsis}"
    );
    assert!(leaves.len() >= 11, "{leaves:?}");
}

/// "This is the complete file with every default": it parses, and into the defaults.
#[test]
fn the_documented_config_file_is_the_defaults() {
    let md = readme();
    let (_, text, line) = blocks(&md)
        .into_iter()
        .find(|(lang, body, _)| lang == "toml" && body.starts_with("[server]"))
        .expect("the complete config file");
    let parsed = jobwarden::config::Config::parse(&text, "README.md")
        .unwrap_or_else(|e| panic!("README.md:{line}: {e}"));
    assert_eq!(
        parsed,
        jobwarden::config::Config::default(),
        "README.md:{line}: the documented defaults differ from the built-in ones"
    );
}
