//! `jobwarden manifest webhook`: the MutatingWebhookConfiguration and
//! ValidatingWebhookConfiguration that send Job and CronJob creations to jobwarden. Pure.
//!
//! Both: `admissionReviewVersions: ["v1"]`, `CREATE` of batch/v1 `jobs` and `cronjobs`,
//! `timeoutSeconds: 2`, `failurePolicy: Ignore` (`Fail` with `--fail-closed`), `matchPolicy:
//! Equivalent`, and a `namespaceSelector` on `kubernetes.io/metadata.name` that leaves out the
//! protected namespaces (and, with `[kubernetes] namespaces` listed, takes only those).
//! `sideEffects`: `None` for the mutating webhook; `NoneOnDryRun` for the validating one, whose
//! denials write an audit row except on dry-run requests. Only CREATE: an UPDATE (jobwarden's
//! own soft-kill patch among them) is never judged, so a Job admitted under an older policy can
//! always be ended.

use std::path::Path;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

use crate::kubernetes::config::{KubernetesConfig, dns_label_problem};

/// Path of the mutating webhook.
pub const MUTATE_PATH: &str = "/admission/mutate";
/// Path of the validating webhook.
pub const VALIDATE_PATH: &str = "/admission/validate";
/// The webhooks' `timeoutSeconds`.
pub const TIMEOUT_SECONDS: i32 = 2;
/// The label every namespace carries with its own name (Kubernetes 1.22+).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Name of both configurations.
pub const CONFIGURATION_NAME: &str = "jobwarden";
/// The cert-manager annotation that fills `caBundle` from a Certificate's CA.
pub const CERT_MANAGER_INJECT: &str = "cert-manager.io/inject-ca-from";

/// Where the API server reaches jobwarden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `--url https://host:port`: the paths are appended.
    Url(String),
    /// `--service NS/NAME[:PORT]`: a Service in the cluster (port 443 by default).
    Service {
        /// Namespace.
        namespace: String,
        /// Service name.
        name: String,
        /// Service port.
        port: i32,
    },
}

/// How the API server trusts jobwarden's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// `--ca-file`: the PEM CA bundle, as `caBundle`.
    Bundle(Vec<u8>),
    /// `--inject-ca-from NS/CERTIFICATE`: cert-manager's CA injector fills `caBundle`.
    CertManager(String),
}

/// What `manifest webhook` was asked for.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    /// Where jobwarden listens.
    pub endpoint: Endpoint,
    /// The CA.
    pub ca: CaSource,
    /// `failurePolicy: Fail` instead of `Ignore`.
    pub fail_closed: bool,
}

/// Why the configurations cannot be rendered; each names the flag. `manifest webhook` exits 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// `--url` is not an https URL without query and fragment.
    #[error("--url {url:?}: {problem}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// `--service` is not `NS/NAME[:PORT]`.
    #[error("--service {value:?}: {problem} (expected NAMESPACE/NAME or NAMESPACE/NAME:PORT)")]
    Service {
        /// The value.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// `--ca-file` holds no certificate.
    #[error("--ca-file {file}: {problem}")]
    Ca {
        /// The file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// `--inject-ca-from` is not `NS/NAME`.
    #[error("--inject-ca-from {0:?}: expected NAMESPACE/CERTIFICATE, both DNS labels")]
    Inject(String),
}

/// Parses `--url`.
pub fn parse_url(url: &str) -> Result<Endpoint, WebhookError> {
    let bad = |problem: &str| WebhookError::Url {
        url: url.to_owned(),
        problem: problem.to_owned(),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if parsed.scheme() != "https" {
        return Err(bad("the API server calls webhooks over https:// only"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("a webhook URL has no query or fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("a webhook URL has no user or password"));
    }
    Ok(Endpoint::Url(url.trim_end_matches('/').to_owned()))
}

/// Parses `--service NS/NAME[:PORT]`.
pub fn parse_service(value: &str) -> Result<Endpoint, WebhookError> {
    let bad = |problem: String| WebhookError::Service {
        value: value.to_owned(),
        problem,
    };
    let (namespace, rest) = value.split_once('/').ok_or_else(|| bad("no '/'".into()))?;
    let (name, port) = match rest.split_once(':') {
        Some((n, p)) => {
            let port: i32 = p
                .parse()
                .ok()
                .filter(|p| (1..=65535).contains(p))
                .ok_or_else(|| bad(format!("port {p:?} is not 1-65535")))?;
            (n, port)
        }
        None => (rest, 443),
    };
    for (what, s) in [("namespace", namespace), ("name", name)] {
        if let Some(problem) = dns_label_problem(s) {
            return Err(bad(format!("the {what} {s:?}: {problem}")));
        }
    }
    Ok(Endpoint::Service {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port,
    })
}

/// Reads `--ca-file`: PEM with at least one certificate, every block decodable.
pub fn read_ca(file: &Path) -> Result<CaSource, WebhookError> {
    let bad = |problem: String| WebhookError::Ca {
        file: file.display().to_string(),
        problem,
    };
    let pem = std::fs::read(file).map_err(|e| bad(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(CaSource::Bundle(pem))
}

/// Parses `--inject-ca-from NS/CERTIFICATE`.
pub fn parse_inject(value: &str) -> Result<CaSource, WebhookError> {
    match value.split_once('/') {
        Some((ns, name))
            if dns_label_problem(ns).is_none() && dns_label_problem(name).is_none() =>
        {
            Ok(CaSource::CertManager(value.to_owned()))
        }
        _ => Err(WebhookError::Inject(value.to_owned())),
    }
}

/// The namespace selector: not a protected namespace; one of the watched ones if any.
pub fn namespace_selector(k: &KubernetesConfig) -> LabelSelector {
    let mut exprs = vec![LabelSelectorRequirement {
        key: NAMESPACE_NAME_LABEL.to_owned(),
        operator: "NotIn".to_owned(),
        values: Some(k.protected_namespaces.clone()),
    }];
    if !k.namespaces.is_empty() {
        exprs.push(LabelSelectorRequirement {
            key: NAMESPACE_NAME_LABEL.to_owned(),
            operator: "In".to_owned(),
            values: Some(k.namespaces.clone()),
        });
    }
    LabelSelector {
        match_expressions: Some(exprs),
        match_labels: None,
    }
}

fn client_config(req: &WebhookRequest, path: &str) -> WebhookClientConfig {
    let ca_bundle = match &req.ca {
        CaSource::Bundle(pem) => Some(ByteString(pem.clone())),
        CaSource::CertManager(_) => None,
    };
    match &req.endpoint {
        Endpoint::Url(url) => WebhookClientConfig {
            ca_bundle,
            service: None,
            url: Some(format!("{url}{path}")),
        },
        Endpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            ca_bundle,
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.to_owned()),
                port: Some(*port),
            }),
            url: None,
        },
    }
}

fn metadata(req: &WebhookRequest) -> ObjectMeta {
    let annotations = match &req.ca {
        CaSource::CertManager(cert) => Some(
            [(CERT_MANAGER_INJECT.to_owned(), cert.clone())]
                .into_iter()
                .collect(),
        ),
        CaSource::Bundle(_) => None,
    };
    ObjectMeta {
        name: Some(CONFIGURATION_NAME.to_owned()),
        labels: Some(
            [
                ("app.kubernetes.io/name".to_owned(), "jobwarden".to_owned()),
                (
                    "app.kubernetes.io/part-of".to_owned(),
                    "jobwarden".to_owned(),
                ),
            ]
            .into_iter()
            .collect(),
        ),
        annotations,
        ..ObjectMeta::default()
    }
}

fn rules() -> Vec<RuleWithOperations> {
    vec![RuleWithOperations {
        api_groups: Some(vec!["batch".to_owned()]),
        api_versions: Some(vec!["v1".to_owned()]),
        operations: Some(vec!["CREATE".to_owned()]),
        resources: Some(vec!["jobs".to_owned(), "cronjobs".to_owned()]),
        scope: Some("Namespaced".to_owned()),
    }]
}

/// The two configurations.
pub fn render(
    req: &WebhookRequest,
    k: &KubernetesConfig,
) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
    let failure_policy = Some(if req.fail_closed { "Fail" } else { "Ignore" }.to_owned());
    let mutating = MutatingWebhookConfiguration {
        metadata: metadata(req),
        webhooks: Some(vec![MutatingWebhook {
            name: "mutate.jobwarden.flowforge.io".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: client_config(req, MUTATE_PATH),
            failure_policy: failure_policy.clone(),
            match_policy: Some("Equivalent".to_owned()),
            namespace_selector: Some(namespace_selector(k)),
            reinvocation_policy: Some("Never".to_owned()),
            rules: Some(rules()),
            side_effects: "None".to_owned(),
            timeout_seconds: Some(TIMEOUT_SECONDS),
            ..MutatingWebhook::default()
        }]),
    };
    let validating = ValidatingWebhookConfiguration {
        metadata: metadata(req),
        webhooks: Some(vec![ValidatingWebhook {
            name: "validate.jobwarden.flowforge.io".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: client_config(req, VALIDATE_PATH),
            failure_policy,
            match_policy: Some("Equivalent".to_owned()),
            namespace_selector: Some(namespace_selector(k)),
            rules: Some(rules()),
            side_effects: "NoneOnDryRun".to_owned(),
            timeout_seconds: Some(TIMEOUT_SECONDS),
            ..ValidatingWebhook::default()
        }]),
    };
    (mutating, validating)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked_and_named() {
        assert_eq!(
            parse_service("jobwarden/jobwarden"),
            Ok(Endpoint::Service {
                namespace: "jobwarden".into(),
                name: "jobwarden".into(),
                port: 443
            })
        );
        assert!(matches!(
            parse_service("jw/hook:8443"),
            Ok(Endpoint::Service { port: 8443, .. })
        ));
        for bad in ["jobwarden", "Jw/hook", "jw/hook:0", "jw/hook:x", "/hook"] {
            let e = parse_service(bad).expect_err(bad).to_string();
            assert!(e.starts_with(&format!("--service {bad:?}")), "{e}");
        }
        assert_eq!(
            parse_url("https://jw.example:8443/"),
            Ok(Endpoint::Url("https://jw.example:8443".into()))
        );
        for bad in [
            "http://jw:8443",
            "https://jw/?a=b",
            "https://u:p@jw",
            "jw:8443",
        ] {
            let e = parse_url(bad).expect_err(bad).to_string();
            assert!(e.starts_with(&format!("--url {bad:?}")), "{e}");
        }
        assert!(parse_inject("jobwarden/jobwarden-webhook").is_ok());
        assert!(parse_inject("jobwarden").is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("ca.crt");
        std::fs::write(&f, "not a certificate").expect("write");
        let e = read_ca(&f).expect_err("no cert").to_string();
        assert!(
            e.contains("ca.crt") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = read_ca(&dir.path().join("missing"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn the_selector_leaves_out_the_protected_namespaces_and_keeps_the_watched_ones() {
        let mut k = KubernetesConfig::default();
        let s = namespace_selector(&k);
        let exprs = s.match_expressions.expect("expressions");
        assert_eq!(exprs.len(), 1);
        assert_eq!(exprs[0].operator, "NotIn");
        assert_eq!(
            exprs[0].values.as_deref(),
            Some(k.protected_namespaces.as_slice())
        );
        k.namespaces = vec!["flowforge".into()];
        let exprs = namespace_selector(&k)
            .match_expressions
            .expect("expressions");
        assert_eq!(exprs[1].operator, "In");
        assert_eq!(exprs[1].values, Some(vec!["flowforge".to_owned()]));
    }
}
