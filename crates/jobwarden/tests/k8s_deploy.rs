//! `deploy/`: each overlay (`namespaced`, `cluster`), alone and with the optional components,
//! rendered by `kubectl kustomize` as an administrator would apply it, then:
//! - every object parses into its k8s-openapi type without losing a field (a typo would be
//!   dropped by the type and the round trip would differ);
//! - the roles grant exactly `API_CALLS`, each role exactly its share: the leader-election
//!   Role the Lease calls in jobwarden's namespace; the job calls cluster-wide (the `cluster`
//!   overlay's ClusterRole) or in each watched namespace only (the `namespaced` overlay's
//!   Roles, nothing cluster-wide), those on Secrets and ConfigMaps only with the
//!   `secret-cleanup` component;
//! - every request the controller sends in a whole scenario (the ladder, a TTL delete with
//!   its labelled objects, an orphan pass) is one the rendered RBAC allows, namespace by
//!   namespace, as the API server's authorizer would decide;
//! - the config passes `config check`, the Deployment, Service, PodDisruptionBudget and
//!   NetworkPolicy fit it and each other (the API port and the admission webhook's, its TLS
//!   Secret), the image (Dockerfile) holds what they run; the example Job is what
//!   `jobwarden manifest job` renders under that config;
//! - `jobwarden manifest webhook` under that config renders webhook configurations that parse
//!   as the admissionregistration.k8s.io/v1 types and call the Service deploy/ installs (with
//!   the cert-manager component: its Certificate, for that Service, into the mounted Secret).
//!
//! kubectl comes from `KUBECTL` or PATH (scripts/test.sh installs one: scripts/tools.sh);
//! without it these tests fail, never skip.

mod k8s_support;
mod tls_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use jobwarden::config::Config;
use jobwarden::kubernetes::manifest::{JobRequest, render_job};
use jobwarden::kubernetes::observe::{Scope, observe_job};
use jobwarden::model::JobId;
use jobwarden::runtime::kubernetes::actions::{API_CALLS, Grant, classify};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_support::fake::{Fake, k8s_time};
use k8s_support::wiring::{at, bound_pod, clock, lines, running_job, start, t0};
use k8s_support::{JOB_UID, Seen};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository")
}

const OVERLAYS: [&str; 2] = ["namespaced", "cluster"];

/// The calls granted only by `deploy/components/secret-cleanup`: `list` on Secrets reads
/// every Secret it may list, so it is the administrator's choice (README, "Run on
/// Kubernetes").
const SECRET_CLEANUP: [(&str, &str); 4] = [
    ("secrets", "list"),
    ("secrets", "delete"),
    ("configmaps", "list"),
    ("configmaps", "delete"),
];

/// `path` relative to `dir` (kustomize takes no absolute paths).
fn relative(dir: &Path, path: &Path) -> PathBuf {
    let dir: Vec<Component> = dir.components().collect();
    let path: Vec<Component> = path.components().collect();
    let common = dir.iter().zip(&path).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..dir.len() {
        out.push("..");
    }
    for c in &path[common..] {
        out.push(c);
    }
    out
}

/// One overlay with some components, rendered.
struct Rendered {
    what: String,
    docs: Vec<Value>,
}

/// `kubectl kustomize` of `deploy/overlays/<overlay>` with `deploy/components/<c>` for each
/// of `components`, as a kustomization of the administrator's would include them.
fn render(overlay: &str, components: &[&str]) -> Rendered {
    let what = if components.is_empty() {
        overlay.to_owned()
    } else {
        format!("{overlay} + {}", components.join(" + "))
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let at = dir.path().canonicalize().expect("tempdir");
    let deploy = repo().join("deploy");
    let mut k = format!(
        "resources:\n  - {}\n",
        relative(&at, &deploy.join("overlays").join(overlay)).display()
    );
    if !components.is_empty() {
        k.push_str("components:\n");
        for c in components {
            let path = relative(&at, &deploy.join("components").join(c));
            k.push_str(&format!("  - {}\n", path.display()));
        }
    }
    std::fs::write(at.join("kustomization.yaml"), k).expect("write kustomization");
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let out = std::process::Command::new(&kubectl)
        .arg("kustomize")
        .arg(&at)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "`{kubectl} kustomize` cannot run ({e}): these tests render deploy/ with it. \
                 scripts/test.sh installs kubectl (scripts/tools.sh); or set KUBECTL"
            )
        });
    assert!(
        out.status.success(),
        "`kubectl kustomize` of {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{what}: kubectl printed no YAML: {e}"));
    let docs: Vec<Value> = docs.into_iter().filter(|v| !v.is_null()).collect();
    assert!(!docs.is_empty(), "{what}: nothing rendered");
    Rendered { what, docs }
}

/// Every overlay alone and with each optional component.
fn variants() -> Vec<Rendered> {
    let mut all = Vec::new();
    for overlay in OVERLAYS {
        all.push(render(overlay, &[]));
        all.push(render(overlay, &["secret-cleanup"]));
        all.push(render(overlay, &["servicemonitor"]));
        all.push(render(overlay, &["cert-manager"]));
    }
    all
}

fn typed<T: DeserializeOwned + Serialize>(what: &str, v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "{what}: {} {} does not parse: {e}",
            v["kind"], v["metadata"]["name"]
        )
    });
    let back = serde_json::to_value(&t).expect("serialises");
    assert_eq!(
        &back, v,
        "{what}: {} {} lost or changed fields in a round trip (typo?)",
        v["kind"], v["metadata"]["name"]
    );
    t
}

impl Rendered {
    fn of_kind<T: DeserializeOwned + Serialize>(&self, kind: &str) -> Vec<T> {
        self.docs
            .iter()
            .filter(|v| v["kind"] == kind)
            .map(|v| typed(&self.what, v))
            .collect()
    }

    fn one<T: DeserializeOwned + Serialize>(&self, kind: &str) -> T {
        let mut all = self.of_kind::<T>(kind);
        assert_eq!(all.len(), 1, "{}: one {kind}", self.what);
        all.remove(0)
    }

    /// The config in the generated ConfigMap, through `config check`'s parser.
    fn config(&self) -> Config {
        let cm: ConfigMap = self.one("ConfigMap");
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get("config.toml"))
            .expect("config.toml key");
        Config::parse(text, &format!("{}: config.toml", self.what))
            .expect("the shipped config passes config check")
    }

    /// jobwarden's service account as an RBAC subject.
    fn service_account(&self) -> Subject {
        let sa: ServiceAccount = self.one("ServiceAccount");
        Subject {
            kind: "ServiceAccount".into(),
            name: sa.metadata.name.expect("name"),
            namespace: sa.metadata.namespace,
            api_group: None,
        }
    }

    fn pod_namespace(&self) -> String {
        let d: Deployment = self.one("Deployment");
        d.metadata.namespace.expect("the Deployment's namespace")
    }

    fn secret_cleanup(&self) -> bool {
        self.what.contains("secret-cleanup")
    }
}

/// A ServiceMonitor (monitoring.coreos.com/v1; no k8s-openapi type): the fields we use,
/// unknown ones rejected.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    namespace_selector: NamespaceSelector,
    endpoints: Vec<Endpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    match_names: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Endpoint {
    port: String,
    path: String,
    interval: String,
}

/// A cert-manager Issuer (cert-manager.io/v1; no k8s-openapi type): the fields we use,
/// unknown ones rejected.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Issuer {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: IssuerSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IssuerSpec {
    self_signed: BTreeMap<String, Value>,
}

/// A cert-manager Certificate (cert-manager.io/v1).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Certificate {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: CertificateSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertificateSpec {
    secret_name: String,
    dns_names: Vec<String>,
    issuer_ref: IssuerRef,
    private_key: PrivateKey,
    duration: String,
    renew_before: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerRef {
    name: String,
    kind: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrivateKey {
    algorithm: String,
    size: u32,
    rotation_policy: String,
}

fn selects(selector: &LabelSelector, labels: &Option<BTreeMap<String, String>>) -> bool {
    assert!(selector.match_expressions.is_none(), "{selector:?}");
    let want = selector.match_labels.clone().unwrap_or_default();
    let have = labels.clone().unwrap_or_default();
    !want.is_empty() && want.iter().all(|(k, v)| have.get(k) == Some(v))
}

#[test]
fn every_rendered_object_parses_into_its_kubernetes_type() {
    for r in variants() {
        let what = &r.what;
        let mut kinds = BTreeSet::new();
        for v in &r.docs {
            let kind = v["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Namespace" => drop(typed::<Namespace>(what, v)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(what, v)),
                "ClusterRole" => drop(typed::<ClusterRole>(what, v)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(what, v)),
                "Role" => drop(typed::<Role>(what, v)),
                "RoleBinding" => drop(typed::<RoleBinding>(what, v)),
                "ConfigMap" => drop(typed::<ConfigMap>(what, v)),
                "Deployment" => drop(typed::<Deployment>(what, v)),
                "Service" => drop(typed::<Service>(what, v)),
                "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(what, v)),
                "NetworkPolicy" => drop(typed::<NetworkPolicy>(what, v)),
                "ServiceMonitor" => drop(typed::<ServiceMonitor>(what, v)),
                "Issuer" => drop(typed::<Issuer>(what, v)),
                "Certificate" => drop(typed::<Certificate>(what, v)),
                other => panic!("{what}: no test parses kind {other:?}; add it here"),
            }
            // Nothing lands in whatever namespace kubectl's context happens to name.
            let cluster_scoped = ["Namespace", "ClusterRole", "ClusterRoleBinding"];
            assert_eq!(
                v["metadata"]["namespace"].is_string(),
                !cluster_scoped.contains(&kind.as_str()),
                "{what}: {kind} {}: namespace",
                v["metadata"]["name"]
            );
            kinds.insert(kind);
        }
        let mut want: BTreeSet<String> = [
            "Namespace",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
        .map(String::from)
        .into();
        if what.starts_with("cluster") {
            want.extend(["ClusterRole".to_owned(), "ClusterRoleBinding".to_owned()]);
        }
        if what.contains("servicemonitor") {
            want.insert("ServiceMonitor".to_owned());
        }
        if what.contains("cert-manager") {
            want.extend(["Issuer".to_owned(), "Certificate".to_owned()]);
        }
        assert_eq!(kinds, want, "{what}");
    }
    // The example is applied by hand, not by the overlays.
    let text = std::fs::read_to_string(repo().join("deploy/example-job.yaml")).expect("read");
    let v: Value = serde_saphyr::from_str(&text).expect("YAML");
    drop(typed::<Job>("deploy/example-job.yaml", &v));
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

/// The job calls (`Grant::Cluster`) a variant must grant: all of them with the
/// `secret-cleanup` component, all but those on Secrets and ConfigMaps without it.
fn job_calls(r: &Rendered) -> Granted {
    let all = used(Grant::Cluster);
    let optional: Granted = SECRET_CLEANUP
        .iter()
        .map(|(res, verb)| (String::new(), (*res).to_owned(), (*verb).to_owned()))
        .collect();
    assert!(
        optional.is_subset(&all),
        "the secret-cleanup component grants calls no code makes: {:?}",
        optional.difference(&all).collect::<Vec<_>>()
    );
    if r.secret_cleanup() {
        all
    } else {
        all.difference(&optional).cloned().collect()
    }
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

fn assert_binds(what: &str, subjects: &[Subject], sa: &Subject) {
    assert_eq!(subjects.len(), 1, "{what}: one subject");
    assert_eq!(
        &subjects[0], sa,
        "{what}: binds jobwarden's service account"
    );
}

#[test]
fn each_overlay_grants_exactly_the_calls_the_code_makes() {
    for r in variants() {
        let what = &r.what;
        let sa = r.service_account();
        let pod_namespace = r.pod_namespace();
        let config = r.config();

        // The Lease calls only in the Lease's namespace: the one jobwarden runs in, since the
        // shipped config leaves `lease_namespace` unset.
        assert_eq!(config.kubernetes.lease_namespace, None, "{what}");
        let roles: Vec<Role> = r.of_kind("Role");
        let bindings: Vec<RoleBinding> = r.of_kind("RoleBinding");
        let binding_of = |ns: &str, role: &str| -> &RoleBinding {
            let found: Vec<&RoleBinding> = bindings
                .iter()
                .filter(|b| {
                    b.metadata.namespace.as_deref() == Some(ns)
                        && b.role_ref.kind == "Role"
                        && b.role_ref.name == role
                })
                .collect();
            assert_eq!(
                found.len(),
                1,
                "{what}: one RoleBinding of Role {ns}/{role}"
            );
            found[0]
        };
        let (lease_roles, job_roles): (Vec<&Role>, Vec<&Role>) = roles
            .iter()
            .partition(|r| r.metadata.name.as_deref() == Some("jobwarden-leader-election"));
        let [lease] = lease_roles.as_slice() else {
            panic!(
                "{what}: one leader-election Role, not {}",
                lease_roles.len()
            );
        };
        assert_eq!(lease.metadata.namespace.as_ref(), Some(&pod_namespace));
        assert_same(
            &format!("{what}: the leader-election Role"),
            &granted(what, lease.rules.as_deref().unwrap_or_default()),
            &used(Grant::LeaseNamespace),
        );
        let b = binding_of(&pod_namespace, "jobwarden-leader-election");
        assert_binds(what, b.subjects.as_deref().unwrap_or_default(), &sa);

        let want = job_calls(&r);
        let cluster_roles: Vec<ClusterRole> = r.of_kind("ClusterRole");
        let cluster_bindings: Vec<ClusterRoleBinding> = r.of_kind("ClusterRoleBinding");
        if what.starts_with("cluster") {
            assert!(
                config.kubernetes.namespaces.is_empty(),
                "{what}: all namespaces"
            );
            assert!(job_roles.is_empty(), "{what}: only the ClusterRole");
            let [role] = cluster_roles.as_slice() else {
                panic!("{what}: one ClusterRole, not {}", cluster_roles.len());
            };
            assert_same(
                &format!("{what}: the ClusterRole"),
                &granted(what, role.rules.as_deref().unwrap_or_default()),
                &want,
            );
            let [binding] = cluster_bindings.as_slice() else {
                panic!("{what}: one ClusterRoleBinding");
            };
            assert_eq!(binding.role_ref.kind, "ClusterRole");
            assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
            assert_binds(what, binding.subjects.as_deref().unwrap_or_default(), &sa);
        } else {
            // Nothing cluster-wide: no ClusterRole at all, so no cluster-wide Secret access.
            assert!(
                cluster_roles.is_empty() && cluster_bindings.is_empty(),
                "{what}: no cluster-wide grant"
            );
            let watched: BTreeSet<String> = config.kubernetes.namespaces.iter().cloned().collect();
            assert!(!watched.is_empty(), "{what}: `namespaces` lists some");
            let with_role: BTreeSet<String> = job_roles
                .iter()
                .map(|r| r.metadata.namespace.clone().expect("namespace"))
                .collect();
            assert_eq!(
                with_role, watched,
                "{what}: a Role in each namespace of [kubernetes] namespaces, and only there"
            );
            assert_eq!(job_roles.len(), watched.len(), "{what}: one Role each");
            for role in job_roles {
                let ns = role.metadata.namespace.as_deref().expect("namespace");
                let name = role.metadata.name.as_deref().expect("name");
                assert_same(
                    &format!("{what}: the Role in {ns}"),
                    &granted(what, role.rules.as_deref().unwrap_or_default()),
                    &want,
                );
                let b = binding_of(ns, name);
                assert_binds(what, b.subjects.as_deref().unwrap_or_default(), &sa);
            }
        }
        // No other binding: each RoleBinding is one of the above.
        let roles_count = r.of_kind::<Role>("Role").len();
        assert_eq!(
            bindings.len(),
            roles_count,
            "{what}: one RoleBinding per Role"
        );
    }
}

#[test]
fn the_overlays_configs_differ_only_in_the_watched_namespaces() {
    let namespaced = render("namespaced", &[]).config();
    let cluster = render("cluster", &[]).config();
    assert!(cluster.kubernetes.namespaces.is_empty());
    assert!(!namespaced.kubernetes.namespaces.is_empty());
    let mut same = namespaced.clone();
    same.kubernetes.namespaces.clear();
    assert_eq!(
        same, cluster,
        "the overlays' config.toml differ in more than namespaces"
    );
    // Two replicas share PostgreSQL; the password is not in the config.
    let url = cluster.store.url.as_deref().expect("[store] url");
    assert!(url.starts_with("postgres://"), "{url}");
    assert!(
        !url["postgres://".len()..]
            .split('@')
            .next()
            .unwrap_or_default()
            .contains(':'),
        "no password in {url}"
    );
    assert_eq!(cluster.kubernetes.replicas, 2);
}

fn container_port(c: &k8s_openapi::api::core::v1::Container, port: &IntOrString) -> i32 {
    let ports = c.ports.as_deref().unwrap_or_default();
    let found = match port {
        IntOrString::Int(n) => ports.iter().find(|p| p.container_port == *n),
        IntOrString::String(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
    };
    found
        .unwrap_or_else(|| panic!("{port:?} is no port of the container"))
        .container_port
}

#[test]
fn the_deployment_runs_two_replicas_that_roll_safely_and_fit_the_config() {
    for overlay in OVERLAYS {
        let r = render(overlay, &[]);
        let what = &r.what;
        let config = r.config();
        let d: Deployment = r.one("Deployment");
        let spec = d.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(2), "{what}");
        assert_eq!(
            config.kubernetes.replicas, 2,
            "{what}: as many as the Deployment"
        );
        let strategy = spec.strategy.as_ref().expect("strategy");
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{what}");
        let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)), "{what}");
        let template = &spec.template;
        let labels = &template
            .metadata
            .as_ref()
            .expect("template metadata")
            .labels;
        assert!(selects(&spec.selector, labels), "{what}");
        let pod = template.spec.as_ref().expect("pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some("jobwarden"));
        let psc = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true));
        let [c] = pod.containers.as_slice() else {
            panic!("{what}: one container");
        };
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let drop = sc.capabilities.as_ref().and_then(|c| c.drop.clone());
        assert_eq!(drop, Some(vec!["ALL".to_owned()]));

        // The Lease's holder identity and namespace come from the downward API.
        let env = |var: &str| c.env.iter().flatten().find(|e| e.name == var).cloned();
        for (var, field) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ] {
            let from = env(var)
                .and_then(|e| e.value_from)
                .and_then(|v| v.field_ref)
                .map(|f| f.field_path);
            assert_eq!(from.as_deref(), Some(field), "{what}: {var}");
        }
        // Each file the process reads is on a mounted volume of the right source.
        let volume_of = |file: &str| -> k8s_openapi::api::core::v1::Volume {
            let m = c
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| Path::new(file).starts_with(&m.mount_path))
                .unwrap_or_else(|| panic!("{what}: nothing mounted at {file}"));
            pod.volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .cloned()
                .unwrap_or_else(|| panic!("{what}: no volume {}", m.name))
        };
        let args = c.args.clone().unwrap_or_default();
        assert!(args.iter().any(|a| a == "--runtime=kubernetes"), "{args:?}");
        let config_file = args
            .iter()
            .find_map(|a| a.strip_prefix("--config="))
            .expect("--config=");
        assert!(config_file.ends_with("/config.toml"));
        let cm: ConfigMap = r.one("ConfigMap");
        let config_volume = volume_of(config_file);
        assert_eq!(
            config_volume.config_map.map(|c| c.name),
            cm.metadata.name,
            "{what}: the generated ConfigMap is mounted"
        );
        let token = config.server.token_file.clone().expect("token_file");
        let token_volume = volume_of(&token.display().to_string());
        assert_eq!(
            token_volume.secret.and_then(|s| s.secret_name).as_deref(),
            Some("jobwarden-api-token")
        );
        let pgpass = env("PGPASSFILE").and_then(|e| e.value).expect("PGPASSFILE");
        let pg_volume = volume_of(&pgpass);
        assert_eq!(
            pg_volume.secret.and_then(|s| s.secret_name).as_deref(),
            Some("jobwarden-postgres")
        );
        assert!(
            env("PGPASSWORD").is_none(),
            "{what}: the password is a file, not in the environment"
        );

        let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(path(&c.startup_probe).as_deref(), Some("/healthz"));
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        let port = container_port(c, &IntOrString::String("http".into()));
        assert!(config.server.listen.ends_with(&format!(":{port}")));
        // The admission webhook: its own port, HTTPS with the mounted Secret's pair.
        let webhook_port = container_port(c, &IntOrString::String("webhook".into()));
        assert_eq!(
            config.admission.listen_addr().map(|a| a.port()),
            Ok(u16::try_from(webhook_port).expect("port")),
            "{what}: [admission] listen is the container port named webhook"
        );
        assert_eq!(
            config.admission.mode,
            jobwarden::kubernetes::admission::Mode::Enforce
        );
        for file in [&config.admission.cert_file, &config.admission.key_file] {
            let file = file.clone().expect("[admission] cert_file and key_file");
            let volume = volume_of(&file.display().to_string());
            assert_eq!(
                volume.secret.and_then(|s| s.secret_name).as_deref(),
                Some("jobwarden-webhook-tls"),
                "{what}: {} comes from the TLS Secret",
                file.display()
            );
        }

        let svc: Service = r.one("Service");
        let svc_spec = svc.spec.as_ref().expect("spec");
        assert_eq!(svc_spec.selector, labels.clone(), "{what}");
        let mut targets = BTreeMap::new();
        for p in svc_spec.ports.iter().flatten() {
            let target = p.target_port.clone().expect("targetPort");
            targets.insert(
                p.name.clone().expect("a named port"),
                (p.port, container_port(c, &target)),
            );
        }
        assert_eq!(
            targets,
            BTreeMap::from([
                ("http".to_owned(), (port, port)),
                ("webhook".to_owned(), (443, webhook_port)),
            ]),
            "{what}: the Service's ports"
        );

        // A drain leaves one replica running.
        let pdb: PodDisruptionBudget = r.one("PodDisruptionBudget");
        let pdb = pdb.spec.expect("spec");
        assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
        assert!(selects(pdb.selector.as_ref().expect("selector"), labels));

        // Ingress only to the container's ports (the API, /metrics, the heartbeats).
        let np: NetworkPolicy = r.one("NetworkPolicy");
        let np = np.spec.expect("spec");
        assert!(
            selects(&np.pod_selector.clone().unwrap_or_default(), labels),
            "{what}"
        );
        assert_eq!(np.policy_types, Some(vec!["Ingress".to_owned()]));
        let rules = np.ingress.expect("ingress rules");
        assert!(!rules.is_empty());
        let mut allowed = BTreeSet::new();
        for rule in rules {
            let ports = rule.ports.expect("every ingress rule names its ports");
            assert!(!ports.is_empty());
            for p in ports {
                assert_eq!(p.protocol.as_deref(), Some("TCP"));
                allowed.insert(container_port(c, &p.port.expect("port")));
            }
        }
        assert_eq!(
            allowed,
            BTreeSet::from([port, webhook_port]),
            "{what}: ingress to the API and the admission webhook, nothing else"
        );
    }
}

#[test]
fn the_servicemonitor_scrapes_the_metrics_port_of_the_service() {
    for overlay in OVERLAYS {
        let r = render(overlay, &["servicemonitor"]);
        let sm: ServiceMonitor = r.one("ServiceMonitor");
        let svc: Service = r.one("Service");
        assert_eq!(sm.api_version, "monitoring.coreos.com/v1");
        assert!(selects(&sm.spec.selector, &svc.metadata.labels));
        assert_eq!(
            sm.spec.namespace_selector.match_names,
            [svc.metadata.namespace.clone().expect("ns")]
        );
        let [endpoint] = sm.spec.endpoints.as_slice() else {
            panic!("one endpoint");
        };
        assert_eq!(endpoint.path, "/metrics");
        assert!(
            svc.spec
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .any(|p| p.name.as_deref() == Some(endpoint.port.as_str())),
            "the Service has a port named {}",
            endpoint.port
        );
    }
}

/// The Dockerfile builds the image the Deployment runs: `jobwarden` as the entrypoint,
/// `jobwarden-init` where `[kubernetes] init_path` says, the Deployment's user, pinned bases.
#[test]
fn the_image_holds_what_the_deployment_and_the_jobs_run() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage");
    for f in &froms {
        assert!(f.contains("@sha256:"), "pinned by digest: {f}");
    }
    assert!(
        froms[1].contains("distroless"),
        "no shell at run time: {}",
        froms[1]
    );
    let build = lines
        .iter()
        .find_map(|l| l.strip_prefix("RUN cargo build "))
        .expect("RUN cargo build");
    for part in [
        "--release",
        "--locked",
        "--bin jobwarden ",
        "--bin jobwarden-init",
    ] {
        assert!(format!("{build} ").contains(part), "{part} in {build}");
    }
    let copy = lines
        .iter()
        .find(|l| l.starts_with("COPY --from=build "))
        .expect("COPY --from=build");
    assert!(copy.ends_with(" /usr/local/bin/"), "{copy}");
    for bin in ["jobwarden", "jobwarden-init"] {
        assert!(
            copy.contains(&format!("/target/release/{bin} ")),
            "{bin} in {copy}"
        );
    }
    let config = render("namespaced", &[]).config();
    assert_eq!(config.kubernetes.init_path, "/usr/local/bin/jobwarden-init");
    assert!(lines.contains(&r#"ENTRYPOINT ["/usr/local/bin/jobwarden"]"#));
    let d: Deployment = render("namespaced", &[]).one("Deployment");
    let pod = d.spec.expect("spec").template.spec.expect("pod");
    let uid = pod
        .security_context
        .and_then(|s| s.run_as_user)
        .expect("runAsUser");
    assert!(
        lines.contains(&format!("USER {uid}:{uid}").as_str()),
        "USER {uid}"
    );
    // The Deployment's arguments start with the subcommand: the entrypoint is the binary.
    assert_eq!(
        pod.containers[0]
            .args
            .as_ref()
            .and_then(|a| a.first())
            .map(String::as_str),
        Some("run")
    );
    // The README builds it the same way (scripts/lint-deploy.sh checks the text too).
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    assert!(
        readme.contains(&format!("cargo build {build}")),
        "README.md shows `cargo build {build}`"
    );
}

#[test]
fn the_example_job_is_what_manifest_job_renders_and_jobwarden_polices_it() {
    let config = render("namespaced", &[]).config();
    let text = std::fs::read_to_string(repo().join("deploy/example-job.yaml")).expect("read");
    let v: Value = serde_saphyr::from_str(&text).expect("YAML");
    let example: Job = typed("deploy/example-job.yaml", &v);
    let rendered = render_job(
        &JobRequest {
            job_id: JobId::parse("example-0001").expect("id"),
            timeout: Some(Duration::from_secs(7200)),
            grace: None,
            ttl: None,
            org: Some("acme".into()),
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
    assert_eq!(rendered.job, example, "deploy/example-job.yaml is stale");
    // In a namespace the namespaced overlay watches.
    let ns = example.metadata.namespace.clone().expect("namespace");
    assert!(config.kubernetes.namespaces.contains(&ns), "{ns}");
    let mut served = example.clone();
    served.metadata.uid = Some("uid".into());
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let o = observe_job(&served, &[], &scope).expect("jobwarden polices the example");
    assert_eq!(o.settings.org.as_deref(), Some("acme"));
    assert!(o.settings.active_deadline >= o.settings.timeout);
}

/// The Kubernetes example of jobwarden-init's README is a Job jobwarden polices: the job-id
/// label on the Job and its pods, a watched namespace, heartbeats to the Service the overlays
/// install, jobwarden-init where `init_path` says.
#[test]
fn the_jobwarden_init_readme_example_is_policed_and_reaches_the_service() {
    let readme = std::fs::read_to_string(repo().join("crates/jobwarden-init/README.md"))
        .expect("jobwarden-init README");
    let section = readme
        .split("## In a Kubernetes Job")
        .nth(1)
        .expect("the section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a yaml block");
    let v: Value = serde_saphyr::from_str(yaml).expect("YAML");
    let job: Job = typed("jobwarden-init README", &v);
    let r = render("namespaced", &[]);
    let config = r.config();
    let label = &config.kubernetes.job_id_label;
    let id = job
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(label))
        .expect("job-id label");
    let spec = job.spec.as_ref().expect("spec");
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    assert_eq!(
        template_labels.and_then(|l| l.get(label).cloned()).as_ref(),
        Some(id)
    );
    let ns = job.metadata.namespace.clone().expect("namespace");
    assert!(
        config.kubernetes.namespaces.contains(&ns),
        "{ns} is watched"
    );
    let c = &spec.template.spec.as_ref().expect("pod").containers[0];
    assert_eq!(
        c.command.as_ref().and_then(|c| c.first()),
        Some(&config.kubernetes.init_path)
    );
    let env = |name: &str| {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert_eq!(&env("FLOWFORGE_JOB_ID"), id);
    let svc: Service = r.one("Service");
    let port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .expect("ports")[0]
        .port;
    assert_eq!(
        env("FLOWFORGE_HEARTBEAT_URL"),
        format!(
            "http://{}.{}.svc:{port}/v1/jobs/{id}/heartbeat",
            svc.metadata.name.as_deref().expect("name"),
            svc.metadata.namespace.as_deref().expect("namespace"),
        )
    );
    let mut served = job.clone();
    served.metadata.uid = Some("uid".into());
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let o = observe_job(&served, &[], &scope).expect("jobwarden polices the example");
    assert_eq!(o.settings.org.as_deref(), Some("acme"));
    assert!(
        o.settings.heartbeat_timeout.is_some(),
        "it opted in to heartbeats"
    );
}

/// What the rendered RBAC lets jobwarden's service account do, as the API server's RBAC
/// authorizer decides it: ClusterRoles bound by ClusterRoleBindings everywhere (cluster-wide
/// requests included), Roles (or ClusterRoles) bound by RoleBindings in their namespace only.
struct Authorizer {
    cluster: Granted,
    namespaced: BTreeMap<String, Granted>,
}

impl Authorizer {
    fn of(r: &Rendered) -> Self {
        let sa = r.service_account();
        let binds = |subjects: &Option<Vec<Subject>>| subjects.iter().flatten().any(|s| *s == sa);
        let cluster_roles: BTreeMap<String, Granted> = r
            .of_kind::<ClusterRole>("ClusterRole")
            .into_iter()
            .map(|c| {
                let rules = granted(&r.what, c.rules.as_deref().unwrap_or_default());
                (c.metadata.name.expect("name"), rules)
            })
            .collect();
        let roles: BTreeMap<(String, String), Granted> = r
            .of_kind::<Role>("Role")
            .into_iter()
            .map(|c| {
                let rules = granted(&r.what, c.rules.as_deref().unwrap_or_default());
                let key = (
                    c.metadata.namespace.expect("namespace"),
                    c.metadata.name.expect("name"),
                );
                (key, rules)
            })
            .collect();
        let mut cluster = Granted::new();
        for b in r.of_kind::<ClusterRoleBinding>("ClusterRoleBinding") {
            if binds(&b.subjects) {
                cluster.extend(
                    cluster_roles
                        .get(&b.role_ref.name)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
        }
        let mut namespaced: BTreeMap<String, Granted> = BTreeMap::new();
        for b in r.of_kind::<RoleBinding>("RoleBinding") {
            if !binds(&b.subjects) {
                continue;
            }
            let ns = b.metadata.namespace.expect("namespace");
            let rules = match b.role_ref.kind.as_str() {
                "ClusterRole" => cluster_roles.get(&b.role_ref.name).cloned(),
                _ => roles.get(&(ns.clone(), b.role_ref.name.clone())).cloned(),
            };
            namespaced
                .entry(ns)
                .or_default()
                .extend(rules.unwrap_or_default());
        }
        Authorizer {
            cluster,
            namespaced,
        }
    }

    /// Whether `request` is allowed (`namespace` None: a cluster-wide list or watch).
    fn allows(&self, request: &Seen) -> bool {
        let call = classify(&request.method, &request.path).expect("a resource URL");
        let path = request.path.split('?').next().unwrap_or_default();
        let parts: Vec<&str> = path.split('/').collect();
        let namespace = parts
            .iter()
            .position(|p| *p == "namespaces")
            .filter(|i| parts.len() > i + 2)
            .map(|i| parts[i + 1]);
        self.cluster.contains(&call)
            || namespace
                .is_some_and(|ns| self.namespaced.get(ns).is_some_and(|g| g.contains(&call)))
    }
}

/// Metadata of a labelled object.
fn object(
    kind: &str,
    ns: &str,
    name: &str,
    labels: Value,
    created: jobwarden::model::Timestamp,
) -> Value {
    json!({"apiVersion": "v1", "kind": kind,
           "metadata": {"name": name, "namespace": ns, "uid": format!("u-{ns}-{name}"),
                        "labels": labels, "creationTimestamp": k8s_time(created)}})
}

/// The controller, with the orphan pass, runs over the fake API server under `r`'s config:
/// a Job goes through the whole ladder (Events, the soft kill's patch, pod deletes, the
/// force delete), a finished Job is deleted at its TTL with its labelled PVC, Secret and
/// ConfigMap, and an orphan pass deletes a labelled Pod, PVC, Secret and ConfigMap whose Job
/// is gone. Labelled objects in a namespace the config does not watch are there too. Returns
/// every request the controller sent.
async fn whole_scenario(r: &Rendered) -> Vec<Seen> {
    let mut config = r.config();
    config.orphans.clean = true;
    if r.what.contains("secret-cleanup") {
        // What the component's doc asks of the administrator with it.
        config.kubernetes.clean_kinds = jobwarden::kubernetes::config::CLEAN_KINDS
            .iter()
            .map(|k| (*k).to_owned())
            .collect();
    }
    let secrets = config.kubernetes.clean_kinds.iter().any(|k| k == "secrets");
    let configmaps = config
        .kubernetes
        .clean_kinds
        .iter()
        .any(|k| k == "configmaps");
    let watched = config
        .kubernetes
        .namespaces
        .first()
        .cloned()
        .unwrap_or_else(|| "flowforge".into());
    assert_eq!(watched, "flowforge", "the fake's Jobs are in flowforge");
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    let old = at(-7200.0);
    // The ladder: timeout 2 s, grace 1 s.
    fake.insert(running_job(
        "build-42",
        JOB_UID,
        t0(),
        json!({"flowforge.io/timeout-seconds": "2", "flowforge.io/grace-period-seconds": "1"}),
    ));
    fake.insert(bound_pod("build-42-a", "pod-a", "build-42", JOB_UID));
    // Finished a minute ago, TTL 1 s, with its labelled objects.
    let mut done = running_job(
        "build-43",
        "uid-43",
        at(-120.0),
        json!({"flowforge.io/ttl-seconds-after-finished": "1"}),
    );
    done["metadata"]["labels"]["job-id"] = "j-43".into();
    done["spec"]["template"]["metadata"]["labels"]["job-id"] = "j-43".into();
    let finished = k8s_time(at(-60.0));
    done["status"] = json!({
        "startTime": k8s_time(at(-120.0)), "completionTime": finished, "succeeded": 1,
        "ready": 0, "terminating": 0, "uncountedTerminatedPods": {},
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
             "lastProbeTime": finished, "lastTransitionTime": finished},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached",
             "lastProbeTime": finished, "lastTransitionTime": finished}
        ]
    });
    fake.insert(done);
    for kind in ["PersistentVolumeClaim", "Secret", "ConfigMap"] {
        let name = format!("ws-43-{}", kind.to_lowercase());
        fake.insert(object(
            kind,
            "flowforge",
            &name,
            json!({"job-id": "j-43"}),
            old,
        ));
    }
    // Orphans of a gone job, in the watched namespace and in another one.
    for ns in ["flowforge", "elsewhere"] {
        for kind in ["Pod", "PersistentVolumeClaim", "Secret", "ConfigMap"] {
            let name = format!("orphan-7-{}", kind.to_lowercase());
            fake.insert(object(kind, ns, &name, json!({"job-id": "j-7"}), old));
        }
    }
    let c = start(&fake, config, true, clock(start_time)).await;
    c.until(20, "the ladder, the TTL cleanup and the orphan pass", |f| {
        f.get("jobs", "flowforge", "build-42").is_none()
            && f.get("jobs", "flowforge", "build-43").is_none()
            && f.get(
                "persistentvolumeclaims",
                "flowforge",
                "ws-43-persistentvolumeclaim",
            )
            .is_none()
            && f.get("pods", "flowforge", "orphan-7-pod").is_none()
            && (!secrets || f.get("secrets", "flowforge", "ws-43-secret").is_none())
            && (!configmaps
                || f.get("configmaps", "flowforge", "orphan-7-configmap")
                    .is_none())
    })
    .await;
    // Kinds left out of clean_kinds are neither listed nor deleted.
    assert_eq!(
        f_has(&fake, "secrets", "ws-43-secret"),
        !secrets,
        "{}: secrets",
        r.what
    );
    assert_eq!(
        f_has(&fake, "configmaps", "orphan-7-configmap"),
        !configmaps,
        "{}: configmaps",
        r.what
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.finish().await
}

fn f_has(fake: &Fake, resource: &str, name: &str) -> bool {
    fake.get(resource, "flowforge", name).is_some()
}

/// Every request of [`whole_scenario`] under `r`'s config is allowed by `r`'s RBAC.
async fn assert_rbac_allows_the_whole_scenario(r: Rendered) {
    let auth = Authorizer::of(&r);
    let seen = whole_scenario(&r).await;
    let kinds: BTreeSet<String> = lines(&seen).into_iter().collect();
    assert!(
        kinds.len() >= 10,
        "the scenario made few kinds of call: {kinds:?}"
    );
    let denied: BTreeSet<String> = lines(
        &seen
            .iter()
            .filter(|s| !auth.allows(s))
            .cloned()
            .collect::<Vec<_>>(),
    )
    .into_iter()
    .collect();
    assert!(
        denied.is_empty(),
        "{}: the API server would answer 403 to {} kinds of request: {denied:#?}",
        r.what,
        denied.len()
    );
}

#[tokio::test]
async fn the_cluster_overlay_with_secret_cleanup_allows_every_request_the_code_sends() {
    assert_rbac_allows_the_whole_scenario(render("cluster", &["secret-cleanup"])).await;
}

/// The contract of the default `cluster` overlay: without the secret-cleanup component the
/// code sends nothing on Secrets or ConfigMaps.
#[tokio::test]
async fn the_cluster_overlay_allows_every_request_the_code_sends() {
    assert_rbac_allows_the_whole_scenario(render("cluster", &[])).await;
}

/// The contract of the `namespaced` overlay: the code lists and watches in the listed
/// namespaces only.
#[tokio::test]
async fn the_namespaced_overlay_with_secret_cleanup_allows_every_request_the_code_sends() {
    assert_rbac_allows_the_whole_scenario(render("namespaced", &["secret-cleanup"])).await;
}

#[tokio::test]
async fn the_namespaced_overlay_allows_every_request_the_code_sends() {
    assert_rbac_allows_the_whole_scenario(render("namespaced", &[])).await;
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

/// `manifest job --heartbeat-timeout` points jobwarden-init at the Service the overlays
/// install: its name, namespace and port.
#[test]
fn manifest_job_heartbeats_go_to_the_deploy_service() {
    let services: Vec<Service> = render("namespaced", &[]).of_kind("Service");
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

fn docs_of(what: &str, text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .unwrap_or_else(|e| panic!("{what}: not YAML: {e}\n{text}"));
    docs.into_iter().filter(|v| !v.is_null()).collect()
}

/// `jobwarden manifest webhook` under each overlay's config: both configurations parse as the
/// admissionregistration.k8s.io/v1 types without losing a field; they call the Service of
/// deploy/ on its webhook port at the webhook paths, trust the CA given, and leave out the
/// protected namespaces (the namespaced overlay: take only its namespaces); `--fail-closed`
/// and `-o json`; with the cert-manager component, `--inject-ca-from` its Certificate, which
/// is for that Service and fills the Secret the Deployment mounts.
#[test]
fn the_webhook_configurations_parse_and_call_the_deploy_service() {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration,
        WebhookClientConfig,
    };
    for overlay in OVERLAYS {
        let r = render(overlay, &["cert-manager"]);
        let what = r.what.clone();
        let config = r.config();
        let cm: ConfigMap = r.one("ConfigMap");
        let dir = tempfile::tempdir().expect("tempdir");
        let config_file = dir.path().join("config.toml");
        std::fs::write(
            &config_file,
            &cm.data.as_ref().expect("data")["config.toml"],
        )
        .expect("write");
        let config_file = config_file.display().to_string();
        let pair = tls_support::make(dir.path(), "jw", "DNS:jobwarden.jobwarden.svc");
        let ca = pair.ca.display().to_string();
        let svc: Service = r.one("Service");
        let svc_ns = svc.metadata.namespace.clone().expect("namespace");
        let svc_name = svc.metadata.name.clone().expect("name");
        let webhook_port = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some("webhook"))
            .expect("a webhook port")
            .port;
        let service = format!("{svc_ns}/{svc_name}");

        let render_hooks =
            |extra: &[&str]| -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
                let mut args = vec![
                    "manifest",
                    "webhook",
                    "--service",
                    &service,
                    "--config",
                    &config_file,
                ];
                args.extend(extra);
                let out = jobwarden(&args);
                assert!(
                    out.status.success(),
                    "{what}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8(out.stdout).expect("utf-8");
                let docs = docs_of(&what, &text);
                assert_eq!(docs.len(), 2, "{what}: two documents");
                (typed(&what, &docs[0]), typed(&what, &docs[1]))
            };
        let check_client = |c: &WebhookClientConfig, path: &str| {
            let s = c.service.as_ref().expect("a service reference");
            assert_eq!(
                (
                    s.namespace.as_str(),
                    s.name.as_str(),
                    s.port,
                    s.path.as_deref()
                ),
                (
                    svc_ns.as_str(),
                    svc_name.as_str(),
                    Some(webhook_port),
                    Some(path)
                ),
                "{what}"
            );
            assert!(c.url.is_none());
        };
        let check_common = |rules: &Option<Vec<RuleWithOperations>>,
                            selector: &Option<LabelSelector>,
                            versions: &[String],
                            timeout: Option<i32>| {
            let [rule] = rules.as_deref().expect("rules") else {
                panic!("{what}: one rule");
            };
            assert_eq!(rule.api_groups, Some(vec!["batch".to_owned()]));
            assert_eq!(rule.api_versions, Some(vec!["v1".to_owned()]));
            assert_eq!(rule.operations, Some(vec!["CREATE".to_owned()]));
            assert_eq!(
                rule.resources,
                Some(vec!["jobs".to_owned(), "cronjobs".to_owned()])
            );
            assert_eq!(versions, ["v1"]);
            assert_eq!(timeout, Some(2));
            let exprs = selector
                .clone()
                .and_then(|s| s.match_expressions)
                .expect("namespaceSelector");
            let by_op: BTreeMap<String, Vec<String>> = exprs
                .into_iter()
                .map(|e| {
                    assert_eq!(e.key, "kubernetes.io/metadata.name");
                    (e.operator, e.values.unwrap_or_default())
                })
                .collect();
            assert_eq!(
                by_op["NotIn"], config.kubernetes.protected_namespaces,
                "{what}"
            );
            assert_eq!(
                by_op.get("In").cloned().unwrap_or_default(),
                config.kubernetes.namespaces,
                "{what}: the watched namespaces, if listed"
            );
        };

        let (m, v) = render_hooks(&["--ca-file", &ca]);
        let pem = std::fs::read(&pair.ca).expect("CA");
        let [mw] = m.webhooks.as_deref().expect("webhooks") else {
            panic!("{what}: one mutating webhook");
        };
        let [vw] = v.webhooks.as_deref().expect("webhooks") else {
            panic!("{what}: one validating webhook");
        };
        check_client(&mw.client_config, "/admission/mutate");
        check_client(&vw.client_config, "/admission/validate");
        assert_eq!(
            mw.client_config.ca_bundle.as_ref().map(|b| &b.0),
            Some(&pem)
        );
        assert_eq!(
            vw.client_config.ca_bundle.as_ref().map(|b| &b.0),
            Some(&pem)
        );
        check_common(
            &mw.rules,
            &mw.namespace_selector,
            &mw.admission_review_versions,
            mw.timeout_seconds,
        );
        check_common(
            &vw.rules,
            &vw.namespace_selector,
            &vw.admission_review_versions,
            vw.timeout_seconds,
        );
        assert_eq!(mw.failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(vw.failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(mw.side_effects, "None");
        // The validating webhook writes an audit row per denial, never on a dry run.
        assert_eq!(vw.side_effects, "NoneOnDryRun");

        let (m, v) = render_hooks(&["--ca-file", &ca, "--fail-closed"]);
        assert_eq!(
            m.webhooks.expect("webhooks")[0].failure_policy.as_deref(),
            Some("Fail")
        );
        assert_eq!(
            v.webhooks.expect("webhooks")[0].failure_policy.as_deref(),
            Some("Fail")
        );

        // JSON: a v1 List of the same two objects.
        let out = jobwarden(&[
            "manifest",
            "webhook",
            "--service",
            &service,
            "--config",
            &config_file,
            "--ca-file",
            &ca,
            "-o",
            "json",
        ]);
        assert!(out.status.success());
        let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(
            (list["apiVersion"].as_str(), list["kind"].as_str()),
            (Some("v1"), Some("List"))
        );
        let (m, v) = render_hooks(&["--ca-file", &ca]);
        assert_eq!(list["items"][0], serde_json::to_value(&m).expect("json"));
        assert_eq!(list["items"][1], serde_json::to_value(&v).expect("json"));

        // cert-manager: the Certificate is for the Service and fills the mounted Secret.
        let cert: Certificate = r.one("Certificate");
        let issuer: Issuer = r.one("Issuer");
        assert_eq!(
            cert.spec.issuer_ref.name,
            issuer.metadata.name.clone().expect("name")
        );
        assert_eq!(cert.metadata.namespace.as_deref(), Some(svc_ns.as_str()));
        assert!(
            cert.spec
                .dns_names
                .contains(&format!("{svc_name}.{svc_ns}.svc")),
            "{what}: {:?}",
            cert.spec.dns_names
        );
        let d: Deployment = r.one("Deployment");
        let mounted: Vec<String> = d
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.volumes)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.secret.and_then(|s| s.secret_name))
            .collect();
        assert!(
            mounted.contains(&cert.spec.secret_name),
            "{what}: {mounted:?}"
        );
        let inject = format!("{svc_ns}/{}", cert.metadata.name.clone().expect("name"));
        let (m, v) = render_hooks(&["--inject-ca-from", &inject]);
        for (meta, client) in [
            (
                &m.metadata,
                &m.webhooks.as_ref().expect("webhooks")[0].client_config,
            ),
            (
                &v.metadata,
                &v.webhooks.as_ref().expect("webhooks")[0].client_config,
            ),
        ] {
            let a = meta.annotations.clone().unwrap_or_default();
            assert_eq!(
                a.get("cert-manager.io/inject-ca-from"),
                Some(&inject),
                "{what}"
            );
            assert!(client.ca_bundle.is_none(), "the CA injector fills it");
        }
    }
    // Bad flags: exit 2, the flag named, nothing printed.
    for (args, want) in [
        (
            vec!["--service", "jobwarden", "--ca-file", "/nonexistent"],
            "--service \"jobwarden\"",
        ),
        (
            vec!["--url", "http://jw:8443", "--ca-file", "/nonexistent"],
            "--url \"http://jw:8443\"",
        ),
        (
            vec![
                "--service",
                "jobwarden/jobwarden",
                "--ca-file",
                "/nonexistent/ca.crt",
            ],
            "--ca-file /nonexistent/ca.crt: cannot read",
        ),
        (vec!["--service", "jobwarden/jobwarden"], "--ca-file"),
        (vec!["--ca-file", "/nonexistent/ca.crt"], "--url"),
    ] {
        let mut all = vec!["manifest", "webhook"];
        all.extend(args.iter().copied());
        let out = jobwarden(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
