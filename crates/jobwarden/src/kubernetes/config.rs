//! `[kubernetes]`: which Jobs the Kubernetes runtime polices and how carefully.
//!
//! Every key has a default, so the section may be absent (the local runtime ignores it).
//! [`KubernetesConfig::check`] returns the first problem as `(key, problem)`; the caller
//! ([`crate::config::Config::validate`]) adds the file name.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::Dur;

/// `[kubernetes]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Namespaces to watch; empty means all (minus the protected ones). With namespaces
    /// listed, every list and watch is made in each of them, never cluster-wide, so a Role in
    /// each is all RBAC must grant (`deploy/overlays/namespaced`); empty needs the ClusterRole
    /// of `deploy/overlays/cluster`.
    pub namespaces: Vec<String>,
    /// Which labelled objects besides pods jobwarden lists and deletes (the TTL cleanup of a
    /// Job's objects and the orphan pass): `persistentvolumeclaims`, `secrets`, `configmaps`.
    /// Leave out `secrets` (and `configmaps`) where jobwarden must not be able to read them:
    /// RBAC cannot grant `list` on only the labelled Secrets, and a list returns their data.
    pub clean_kinds: Vec<String>,
    /// Namespaces never touched, whatever their objects carry.
    pub protected_namespaces: Vec<String>,
    /// The label whose value is the job id; objects without it are never touched.
    pub job_id_label: String,
    /// Namespace of the leader-election Lease (default: the namespace jobwarden runs in, from
    /// `POD_NAMESPACE` or the service account, else `default`). RBAC: get, create, update on
    /// leases there (the Role in `deploy/base/leader-election.yaml`).
    pub lease_namespace: Option<String>,
    /// Name of the leader-election Lease; replicas sharing it elect one leader.
    pub lease_name: String,
    /// How long a leader's Lease is valid without renewal (D): the leader renews every D/3 and
    /// stops acting 2D/3 after its last successful renewal; a standby takes over about D after
    /// the leader's last renewal. Longer: fewer writes, slower failover.
    pub lease_duration: Dur,
    /// Replicas of jobwarden. All watch, the Lease holder acts, the others stand by. More than
    /// one needs a PostgreSQL store. With one, the election still runs (it keeps a second
    /// deployment by mistake from acting too).
    pub replicas: u32,
    /// Per-kind minimum age before a labelled object can be an orphan.
    pub orphan_min_age: OrphanMinAge,
    /// Destructive API calls (DELETE, kill patches) per minute, across all Jobs.
    pub destructive_calls_per_minute: u32,
    /// Path of jobwarden-init inside job images (`jobwarden manifest job` uses it as the
    /// entrypoint).
    pub init_path: String,
    /// jobwarden's job API as jobs' pods reach it (the Service of `deploy/base`): where
    /// jobwarden-init sends the heartbeats of Jobs submitted with a heartbeat timeout
    /// (`POST /v1/jobs`, and `manifest job` without `--heartbeat-server`).
    pub api_url: String,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespaces: Vec::new(),
            protected_namespaces: vec![
                "kube-system".to_owned(),
                "kube-public".to_owned(),
                "kube-node-lease".to_owned(),
            ],
            clean_kinds: CLEAN_KINDS.iter().map(|k| (*k).to_owned()).collect(),
            job_id_label: "job-id".to_owned(),
            lease_namespace: None,
            lease_name: "jobwarden-leader".to_owned(),
            lease_duration: Dur::secs(15),
            replicas: 1,
            orphan_min_age: OrphanMinAge::default(),
            destructive_calls_per_minute: 120,
            init_path: "/usr/local/bin/jobwarden-init".to_owned(),
            api_url: super::manifest::DEFAULT_HEARTBEAT_SERVER.to_owned(),
        }
    }
}

/// The values `[kubernetes] clean_kinds` accepts (and its default).
pub const CLEAN_KINDS: [&str; 3] = ["persistentvolumeclaims", "secrets", "configmaps"];

/// `[kubernetes.orphan_min_age]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OrphanMinAge {
    /// Pods.
    pub pods: Dur,
    /// PersistentVolumeClaims.
    pub persistentvolumeclaims: Dur,
    /// Secrets.
    pub secrets: Dur,
    /// ConfigMaps.
    pub configmaps: Dur,
}

impl Default for OrphanMinAge {
    fn default() -> Self {
        OrphanMinAge {
            pods: Dur::secs(3600),
            persistentvolumeclaims: Dur::secs(3600),
            secrets: Dur::secs(3600),
            configmaps: Dur::secs(3600),
        }
    }
}

impl KubernetesConfig {
    /// The protected namespaces as a set.
    pub fn protected(&self) -> BTreeSet<String> {
        self.protected_namespaces.iter().cloned().collect()
    }

    /// The first problem, as `(dotted key, what is wrong)`. `store_url` is `[store] url`.
    pub fn check(&self, store_url: Option<&str>) -> Result<(), (String, String)> {
        let bad = |k: &str, p: String| Err((format!("kubernetes.{k}"), p));
        if let Some(problem) = label_key_problem(&self.job_id_label) {
            return bad(
                "job_id_label",
                format!("{:?} is not a label key: {problem}", self.job_id_label),
            );
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if let Some(problem) = dns_label_problem(ns) {
                return bad(
                    &format!("namespaces[{i}]"),
                    format!("{ns:?} is not a namespace name: {problem}"),
                );
            }
            if self.protected_namespaces.contains(ns) {
                return bad(
                    &format!("namespaces[{i}]"),
                    format!(
                        "{ns:?} is also in kubernetes.protected_namespaces; remove it from one of them"
                    ),
                );
            }
        }
        for (i, kind) in self.clean_kinds.iter().enumerate() {
            if !CLEAN_KINDS.contains(&kind.as_str()) {
                return bad(
                    &format!("clean_kinds[{i}]"),
                    format!(
                        "{kind:?} is not a kind jobwarden cleans (expected some of: {})",
                        CLEAN_KINDS.join(", ")
                    ),
                );
            }
        }
        for (i, ns) in self.protected_namespaces.iter().enumerate() {
            if let Some(problem) = dns_label_problem(ns) {
                return bad(
                    &format!("protected_namespaces[{i}]"),
                    format!("{ns:?} is not a namespace name: {problem}"),
                );
            }
        }
        if !super::manifest::is_http_url(&self.api_url) {
            return bad(
                "api_url",
                format!("{:?} is not an http:// or https:// URL", self.api_url),
            );
        }
        if let Some(ns) = &self.lease_namespace
            && let Some(problem) = dns_label_problem(ns)
        {
            return bad(
                "lease_namespace",
                format!("{ns:?} is not a namespace name: {problem}"),
            );
        }
        if let Some(problem) = dns_label_problem(&self.lease_name) {
            return bad(
                "lease_name",
                format!("{:?} is not a valid name: {problem}", self.lease_name),
            );
        }
        if self.lease_duration.0 < Duration::from_secs(1) {
            return bad("lease_duration", "must be at least 1s".into());
        }
        if self.destructive_calls_per_minute == 0 {
            return bad(
                "destructive_calls_per_minute",
                "must be at least 1 (no Job could ever be ended)".into(),
            );
        }
        if self.replicas == 0 {
            return bad("replicas", "must be at least 1".into());
        }
        let postgres = store_url
            .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
        if self.replicas > 1 && !postgres {
            return bad(
                "replicas",
                format!(
                    "{} replicas need a shared PostgreSQL store: set [store] url = \"postgres://…\" (SQLite is for a single replica)",
                    self.replicas
                ),
            );
        }
        if !self.init_path.starts_with('/') {
            return bad(
                "init_path",
                format!("{:?} must be an absolute path", self.init_path),
            );
        }
        Ok(())
    }
}

/// Why `s` is not an RFC 1123 DNS label (namespace and Lease names), if it is not.
pub(crate) fn dns_label_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("it is empty");
    }
    if s.len() > 63 {
        return Some("it is longer than 63 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("only lowercase letters, digits and '-' are allowed");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("it must start and end with a letter or digit");
    }
    None
}

/// Why `s` is not a label key (`[prefix/]name`), if it is not.
fn label_key_problem(s: &str) -> Option<&'static str> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix
        && (p.is_empty()
            || p.len() > 253
            || !p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'))
    {
        return Some("the prefix must be a DNS subdomain");
    }
    if name.is_empty() || name.len() > 63 {
        return Some("the name must be 1-63 characters");
    }
    let ok = |b: u8| b.is_ascii_alphanumeric();
    if !name
        .bytes()
        .all(|b| ok(b) || matches!(b, b'-' | b'_' | b'.'))
        || !name.bytes().next().is_some_and(ok)
        || !name.bytes().last().is_some_and(ok)
    {
        return Some(
            "the name must be alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(toml_text: &str, store: Option<&str>) -> (String, String) {
        let c: KubernetesConfig = toml::from_str(toml_text).expect("parses");
        c.check(store).expect_err("should be rejected")
    }

    #[test]
    fn defaults_are_valid_and_protect_the_system_namespaces() {
        let c = KubernetesConfig::default();
        c.check(None).expect("valid");
        assert_eq!(c.job_id_label, "job-id");
        assert!(c.protected().contains("kube-system"));
        assert!(c.protected().contains("kube-node-lease"));
        assert_eq!(c.orphan_min_age.pods.as_secs(), 3600);
    }

    #[test]
    fn more_than_one_replica_needs_postgres() {
        let (k, p) = problem("replicas = 2", Some("sqlite:///var/lib/jw.db"));
        assert_eq!(k, "kubernetes.replicas");
        assert!(p.contains("PostgreSQL"), "{p}");
        let c: KubernetesConfig = toml::from_str("replicas = 2").expect("parses");
        c.check(Some("postgres://jw@db:5432/jw"))
            .expect("valid with postgres");
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            problem("job_id_label = \"job id\"", None).0,
            "kubernetes.job_id_label"
        );
        assert_eq!(
            problem("namespaces = [\"jobs\", \"kube-system\"]", None).0,
            "kubernetes.namespaces[1]"
        );
        assert_eq!(
            problem("namespaces = [\"Jobs\"]", None).0,
            "kubernetes.namespaces[0]"
        );
        assert_eq!(
            problem("lease_duration = \"0s\"", None).0,
            "kubernetes.lease_duration"
        );
        assert_eq!(
            problem("destructive_calls_per_minute = 0", None).0,
            "kubernetes.destructive_calls_per_minute"
        );
        let (k, p) = problem("clean_kinds = [\"persistentvolumeclaims\", \"pods\"]", None);
        assert_eq!(k, "kubernetes.clean_kinds[1]");
        assert!(p.contains("\"pods\"") && p.contains("secrets"), "{p}");
        assert!(label_key_problem("flowforge.io/job-id").is_none());
        assert!(label_key_problem("-x").is_some());
    }

    #[test]
    fn config_check_names_the_file_and_the_kubernetes_key() {
        use crate::config::Config;
        let e = Config::parse("[kubernetes]\nreplicas = 2\n", "jw.toml")
            .expect_err("sqlite with two replicas")
            .to_string();
        assert!(
            e.contains("jw.toml") && e.contains("kubernetes.replicas") && e.contains("PostgreSQL"),
            "{e}"
        );
        Config::parse(
            "[store]\nurl = \"postgres://jw@db:5432/jw\"\n[kubernetes]\nreplicas = 2\n",
            "jw.toml",
        )
        .expect("valid with postgres");
        let e = Config::parse("[kubernetes]\njob_label = \"x\"\n", "jw.toml")
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("jw.toml") && e.contains("job_label"), "{e}");
    }
}
