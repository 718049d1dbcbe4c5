//! `[admission]`: the admission webhook of `run --runtime kubernetes`.
//!
//! Every key has a default and the default mode is `off`, so the section may be absent.
//! [`AdmissionConfig::check`] returns the first problem as `(key, problem)`, without reading
//! a file; `cli::preflight` reads the certificate and key ([`super::tls::load`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the validating webhook does with a Job that breaks the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny it (the mutating webhook adds the policy to every other Job).
    Enforce,
    /// Admit it with AdmissionReview warnings (the mutating webhook works as with `enforce`).
    Warn,
    /// No webhook server.
    Off,
}

impl Mode {
    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Off => "off",
        }
    }
}

/// `[admission]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// HTTPS listen address of the webhook (`/admission/mutate`, `/admission/validate`).
    pub listen: String,
    /// PEM certificate chain (leaf first) the webhook serves; reloaded when the file changes.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the certificate; reloaded with it.
    pub key_file: Option<PathBuf>,
    /// `enforce`, `warn` or `off`.
    pub mode: Mode,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            listen: "127.0.0.1:8443".to_owned(),
            cert_file: None,
            key_file: None,
            mode: Mode::Off,
        }
    }
}

impl AdmissionConfig {
    /// Whether the webhook server runs.
    pub fn enabled(&self) -> bool {
        self.mode != Mode::Off
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, String> {
        self.listen
            .parse()
            .map_err(|e| format!("{:?} is not an address and port: {e}", self.listen))
    }

    /// The first problem, as `(dotted key, what is wrong)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, p: String| Err((format!("admission.{k}"), p));
        if let Err(problem) = self.listen_addr() {
            return bad("listen", problem);
        }
        if self.enabled() {
            for (key, file) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
                match file {
                    None => {
                        return bad(
                            key,
                            format!(
                                "required with mode = \"{}\" (the webhook serves HTTPS only); or set mode = \"off\"",
                                self.mode.as_str()
                            ),
                        );
                    }
                    Some(p) if p.as_os_str().is_empty() => {
                        return bad(key, "must not be empty".into());
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> (String, String) {
        let c: AdmissionConfig = toml::from_str(text).expect("parses");
        c.check().expect_err("should be rejected")
    }

    #[test]
    fn off_by_default_and_the_defaults_are_valid() {
        let c = AdmissionConfig::default();
        assert_eq!(c.mode, Mode::Off);
        c.check().expect("valid");
    }

    #[test]
    fn enforce_and_warn_need_a_certificate_and_a_key() {
        let (k, p) = problem("mode = \"enforce\"");
        assert_eq!(k, "admission.cert_file");
        assert!(
            p.contains("mode = \"enforce\"") && p.contains("HTTPS"),
            "{p}"
        );
        let (k, _) = problem("mode = \"warn\"\ncert_file = \"/tls/tls.crt\"");
        assert_eq!(k, "admission.key_file");
        let c: AdmissionConfig = toml::from_str(
            "mode = \"warn\"\ncert_file = \"/tls/tls.crt\"\nkey_file = \"/tls/tls.key\"",
        )
        .expect("parses");
        c.check().expect("valid");
    }

    #[test]
    fn a_bad_listen_address_or_mode_names_its_key() {
        let (k, p) = problem("listen = \"localhost\"");
        assert_eq!(k, "admission.listen");
        assert!(p.contains("\"localhost\""), "{p}");
        let e = crate::config::Config::parse("[admission]\nmode = \"audit\"\n", "jw.toml")
            .expect_err("unknown mode")
            .to_string();
        assert!(
            e.contains("jw.toml") && e.contains("mode") && e.contains("enforce"),
            "{e}"
        );
    }
}
