//! `deploy/`: every manifest parses into its k8s-openapi type without losing a field (a typo
//! would be dropped by the type and the round trip would differ); the ClusterRole and the
//! leader-election Role together grant exactly `API_CALLS`, each exactly its share; the
//! ConfigMap's config passes `config check`; the example Job is what `jobwarden manifest job`
//! renders under that config.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jobwarden::config::Config;
use jobwarden::kubernetes::actions::{API_CALLS, Grant};
use jobwarden::kubernetes::manifest::{JobRequest, render_job};
use jobwarden::kubernetes::observe::{Scope, observe_job};
use jobwarden::model::JobId;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every document of every manifest file, with the file it came from.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable");
        let values: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", f.display()));
        for v in values.into_iter().filter(|v| !v.is_null()) {
            docs.push((f.display().to_string(), v));
        }
    }
    docs
}

fn typed<T: DeserializeOwned + Serialize>(file: &str, v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{file}: {} does not parse: {e}", v["kind"]));
    let back = serde_json::to_value(&t).expect("serialises");
    assert_eq!(
        &back, v,
        "{file}: {} lost or changed fields in a round trip (typo?)",
        v["kind"]
    );
    t
}

fn of_kind<T: DeserializeOwned + Serialize>(kind: &str) -> Vec<T> {
    documents()
        .iter()
        .filter(|(_, v)| v["kind"] == kind)
        .map(|(f, v)| typed(f, v))
        .collect()
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let mut kinds = BTreeSet::new();
    for (file, v) in documents() {
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(&file, &v)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(&file, &v)),
            "ClusterRole" => drop(typed::<ClusterRole>(&file, &v)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&file, &v)),
            "Role" => drop(typed::<Role>(&file, &v)),
            "RoleBinding" => drop(typed::<RoleBinding>(&file, &v)),
            "ConfigMap" => drop(typed::<ConfigMap>(&file, &v)),
            "Deployment" => drop(typed::<Deployment>(&file, &v)),
            "Service" => drop(typed::<Service>(&file, &v)),
            "Job" => drop(typed::<Job>(&file, &v)),
            other => panic!("{file}: no test parses kind {other:?}; add it here"),
        }
        kinds.insert(kind);
    }
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "Job",
    ] {
        assert!(kinds.contains(k), "deploy/ has no {k}");
    }
}

type Granted = BTreeSet<(String, String, String)>;

/// What `rules` grant, one (group, resource, verb) each; no wildcards, no names, no repeats.
fn granted(what: &str, rules: &[PolicyRule]) -> Granted {
    let mut granted = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{what}: {rule:?}"
        );
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    assert!(v != "*" && r != "*" && g != "*", "{what}: no wildcards");
                    let new = granted.insert((g.clone(), r.clone(), v.clone()));
                    assert!(new, "{what}: ({g:?}, {r}, {v}) granted twice");
                }
            }
        }
    }
    granted
}

fn used(grant: Grant) -> Granted {
    API_CALLS
        .iter()
        .filter(|c| c.grant == grant)
        .map(|c| (c.group.to_owned(), c.resource.to_owned(), c.verb.to_owned()))
        .collect()
}

fn assert_same(what: &str, granted: &Granted, used: &Granted) {
    let missing: Vec<_> = used.difference(granted).collect();
    let unused: Vec<_> = granted.difference(used).collect();
    assert!(
        missing.is_empty(),
        "{what} lacks calls the code makes: {missing:?}"
    );
    assert!(
        unused.is_empty(),
        "{what} grants calls no code makes: {unused:?}"
    );
}

#[test]
fn the_cluster_role_and_the_lease_role_grant_exactly_the_calls_the_code_makes() {
    let sas: Vec<ServiceAccount> = of_kind("ServiceAccount");
    let sa = &sas[0].metadata;

    let roles: Vec<ClusterRole> = of_kind("ClusterRole");
    assert_eq!(roles.len(), 1);
    let cluster = granted(
        "the ClusterRole",
        roles[0].rules.as_deref().unwrap_or_default(),
    );
    assert_same("the ClusterRole", &cluster, &used(Grant::Cluster));
    let bindings: Vec<ClusterRoleBinding> = of_kind("ClusterRoleBinding");
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&bindings[0].role_ref.name),
        roles[0].metadata.name.as_ref()
    );
    let subject = &bindings[0].subjects.as_ref().expect("subjects")[0];
    assert_eq!(Some(&subject.name), sa.name.as_ref());
    assert_eq!(subject.namespace, sa.namespace);

    // The Lease calls only in the Lease's namespace: the one jobwarden runs in, since the
    // shipped config leaves `lease_namespace` unset.
    assert_eq!(configmap_config().kubernetes.lease_namespace, None);
    let deployments: Vec<Deployment> = of_kind("Deployment");
    let pod_namespace = deployments[0].metadata.namespace.clone();
    let roles: Vec<Role> = of_kind("Role");
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0].metadata.namespace, pod_namespace);
    let lease = granted("the Role", roles[0].rules.as_deref().unwrap_or_default());
    assert_same(
        "the leader-election Role",
        &lease,
        &used(Grant::LeaseNamespace),
    );
    let bindings: Vec<RoleBinding> = of_kind("RoleBinding");
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].metadata.namespace, pod_namespace);
    assert_eq!(bindings[0].role_ref.kind, "Role");
    assert_eq!(
        Some(&bindings[0].role_ref.name),
        roles[0].metadata.name.as_ref()
    );
    let subjects = bindings[0].subjects.as_ref().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(Some(&subjects[0].name), sa.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.namespace);
}

fn configmap_config() -> Config {
    let cms: Vec<ConfigMap> = of_kind("ConfigMap");
    let text = cms[0]
        .data
        .as_ref()
        .and_then(|d| d.get("config.toml"))
        .expect("config.toml key");
    Config::parse(text, "deploy/configmap.yaml").expect("the shipped config passes config check")
}

#[test]
fn the_deployment_runs_the_kubernetes_runtime_with_probes_and_the_config() {
    let config = configmap_config();
    let deployments: Vec<Deployment> = of_kind("Deployment");
    let d = &deployments[0];
    let spec = d.spec.as_ref().expect("spec");
    assert_eq!(
        spec.replicas,
        Some(1),
        "SQLite in the ConfigMap: one replica"
    );
    assert_eq!(config.kubernetes.replicas, 1);
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("jobwarden"));
    let c = &pod.containers[0];
    // The Lease's holder identity and namespace come from the downward API.
    for (var, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let from = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == var)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(from, Some(field), "{var}");
    }
    let args = c.args.clone().unwrap_or_default();
    assert!(args.iter().any(|a| a == "--runtime=kubernetes"), "{args:?}");
    assert!(
        args.iter()
            .any(|a| a == "--config=/etc/jobwarden/config/config.toml")
    );
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
    let port = c.ports.as_ref().expect("ports")[0].container_port;
    assert!(config.server.listen.ends_with(&format!(":{port}")));
    let services: Vec<Service> = of_kind("Service");
    let svc = services[0].spec.as_ref().expect("spec");
    assert_eq!(
        svc.selector,
        spec.template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
    );
}

#[test]
fn the_example_job_is_what_manifest_job_renders_and_jobwarden_polices_it() {
    let config = configmap_config();
    let jobs: Vec<Job> = of_kind("Job");
    let example = &jobs[0];
    let rendered = render_job(
        &JobRequest {
            job_id: JobId::parse("example-0001").expect("id"),
            timeout: Duration::from_secs(7200),
            grace: None,
            ttl: None,
            org: "acme".into(),
            job_type: Some("build".into()),
            name: Some("flowforge-example".into()),
            namespace: Some("flowforge".into()),
            image: "ghcr.io/flowforge/runner:1".into(),
            command: vec!["make".into(), "test".into()],
            heartbeat: None,
        },
        &config,
    )
    .expect("renders");
    assert_eq!(&rendered.job, example, "deploy/example-job.yaml is stale");
    let mut served = example.clone();
    served.metadata.uid = Some("uid".into());
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let o = observe_job(&served, &[], &scope).expect("jobwarden polices the example");
    assert_eq!(o.settings.org.as_deref(), Some("acme"));
    assert!(o.settings.active_deadline >= o.settings.timeout);
}

fn jobwarden(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_jobwarden"))
        .args(args)
        .env_remove("JOBWARDEN_CONFIG")
        .output()
        .expect("runs jobwarden")
}

#[test]
fn manifest_job_prints_a_job_capped_by_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("jw.toml");
    std::fs::write(&cfg, "[policy.organization_max]\nacme = \"1h\"\n").expect("write");
    let cfg = cfg.display().to_string();
    let out = jobwarden(&[
        "manifest",
        "job",
        "--timeout",
        "2h",
        "--org",
        "acme",
        "--image",
        "img:1",
        "--grace",
        "90s",
        "--type",
        "build",
        "--job-id",
        "j-7",
        "--config",
        &cfg,
        "-o",
        "json",
        "--",
        "sh",
        "-c",
        "sleep 1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: Job = serde_json::from_slice(&out.stdout).expect("a batch/v1 Job as JSON");
    let a = job.metadata.annotations.clone().expect("annotations");
    assert_eq!(
        a["flowforge.io/timeout-seconds"], "3600",
        "acme's 1h caps --timeout 2h"
    );
    assert_eq!(a["flowforge.io/grace-period-seconds"], "90");
    assert_eq!(a["flowforge.io/job-type"], "build");
    let spec = job.spec.expect("spec");
    assert_eq!(spec.active_deadline_seconds, Some(3690));
    let pod = spec.template.spec.expect("pod");
    assert!(pod.termination_grace_period_seconds >= Some(90));
    assert_eq!(
        pod.containers[0].command.clone().unwrap_or_default(),
        ["/usr/local/bin/jobwarden-init", "--", "sh", "-c", "sleep 1"]
    );
    assert_eq!(job.metadata.labels.expect("labels")["job-id"], "j-7");

    // YAML by default, with a generated job id.
    let out = jobwarden(&[
        "manifest",
        "job",
        "--timeout",
        "30m",
        "--org",
        "acme",
        "--image",
        "img:1",
        "--",
        "true",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let job: Job = serde_saphyr::from_str(&text).expect("YAML Job");
    let id = &job.metadata.labels.expect("labels")["job-id"];
    assert_eq!(
        job.metadata.name.as_deref(),
        Some(format!("flowforge-{id}").as_str())
    );

    // Bad input: exit 2 with the problem named.
    let out = jobwarden(&[
        "manifest",
        "job",
        "--timeout",
        "2h",
        "--org",
        "acme",
        "--image",
        "img",
        "--name",
        "Bad_Name",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--name \"Bad_Name\""));
}

/// Without a cluster, `run --runtime kubernetes` fails with a clear message and creates
/// nothing: no store file or artifacts directory is left behind in the data dir.
#[test]
fn without_a_cluster_run_fails_clearly_and_creates_no_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobwarden"))
        .args(["run", "--runtime", "kubernetes", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("JOBWARDEN_CONFIG")
        .env_remove("JOBWARDEN_STORE")
        .output()
        .expect("run jobwarden");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no Kubernetes API server"), "{stderr}");
    assert!(
        !data.join("jobwarden.db").exists(),
        "a store was created although there is no cluster"
    );
    assert!(
        !data.join("artifacts").exists(),
        "the file:// artifact store was created although there is no cluster"
    );
}

/// `manifest job --heartbeat-timeout` points jobwarden-init at the Service in `deploy/`: its
/// name, namespace and port.
#[test]
fn manifest_job_heartbeats_go_to_the_deploy_service() {
    let services: Vec<Service> = of_kind("Service");
    let [service] = services.as_slice() else {
        panic!("one Service in deploy/, not {}", services.len());
    };
    let port = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.iter().find(|p| p.name.as_deref() == Some("http")))
        .expect("an http port")
        .port;
    let want = format!(
        "http://{}.{}.svc:{port}/v1/jobs/j-8/heartbeat",
        service.metadata.name.as_deref().expect("name"),
        service.metadata.namespace.as_deref().expect("namespace"),
    );
    let out = jobwarden(&[
        "manifest",
        "job",
        "--timeout",
        "1h",
        "--org",
        "acme",
        "--image",
        "img:1",
        "--job-id",
        "j-8",
        "--heartbeat-timeout",
        "5m",
        "-o",
        "json",
        "--",
        "true",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        job["metadata"]["annotations"]["flowforge.io/heartbeat-timeout-seconds"],
        "300"
    );
    let env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
    let url = env
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == "FLOWFORGE_HEARTBEAT_URL"))
        .map(|v| v["value"].clone());
    assert_eq!(url, Some(Value::String(want)), "{env}");

    // --heartbeat-server needs --heartbeat-timeout (no heartbeats without a check).
    let out = jobwarden(&[
        "manifest",
        "job",
        "--timeout",
        "1h",
        "--org",
        "acme",
        "--image",
        "img:1",
        "--heartbeat-server",
        "http://jw:7800",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--heartbeat-timeout"));
}

/// The job API is served in Kubernetes mode too, so off loopback `run` needs the token, as the
/// local daemon does; it refuses before touching the cluster or the store.
#[test]
fn off_loopback_run_refuses_to_start_without_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobwarden"))
        .args(["run", "--runtime", "kubernetes", "--listen", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(&data)
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("JOBWARDEN_CONFIG")
        .env_remove("JOBWARDEN_STORE")
        .output()
        .expect("run jobwarden");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without authentication"),
        "{stderr}"
    );
    assert!(!data.join("jobwarden.db").exists());
}

/// `manifest job` refuses what the API server (or jobwarden) would reject, before rendering
/// anything: exit 2, nothing on stdout, the flag named. A name derived from the job id is
/// blamed on `--job-id`, never on a `--name` that was not passed.
#[test]
fn manifest_job_refuses_bad_input_naming_the_flag() {
    let long_id = "a".repeat(100);
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (vec!["--job-id", &long_id], "--job-id", "longer than 63"),
        (
            vec!["--job-id", "_ab."],
            "--job-id",
            "begin and end with a letter or digit",
        ),
        (
            vec!["--job-id", "Build_7"],
            "--job-id \"Build_7\"",
            "pass --name",
        ),
        (
            vec!["--org", "../../x"],
            "--org",
            "invalid organisation \"../../x\"",
        ),
        (
            vec!["--org", "ünïcode-org"],
            "--org",
            "invalid organisation",
        ),
        (vec!["--type=-build"], "--type", "invalid job type"),
        (vec!["--namespace", "Team_A"], "--namespace", "DNS label"),
        (
            vec!["--name", "Bad_Name"],
            "--name \"Bad_Name\"",
            "DNS label",
        ),
        (vec!["--timeout", "0"], "--timeout", "greater than 0"),
    ];
    for (flags, flag, problem) in cases {
        let mut args = vec!["manifest", "job", "--image", "img:1"];
        if !flags.iter().any(|f| f.starts_with("--timeout")) {
            args.extend(["--timeout", "1h"]);
        }
        if !flags.iter().any(|f| f.starts_with("--org")) {
            args.extend(["--org", "acme"]);
        }
        args.extend(flags.iter().copied());
        args.extend(["--", "true"]);
        let out = jobwarden(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed a manifest");
        assert!(
            stderr.contains(flag) && stderr.contains(problem),
            "{args:?}: want {flag:?} and {problem:?} in {stderr}"
        );
        if !flags.contains(&"--name") {
            assert!(
                !stderr.contains("--name \""),
                "{args:?} blames a --name that was not passed: {stderr}"
            );
        }
    }
}
