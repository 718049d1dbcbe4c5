//! Real certificates for the tests and the admission benchmark, made with the `openssl` CLI:
//! a self-signed CA (basicConstraints CA:TRUE) and a leaf it signs, with the subject
//! alternative names asked for (the same commands the README gives). No "accept any
//! certificate" anywhere: clients trust the CA and check the name.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a leaf it signed, as PEM files in `dir`.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The leaf certificate.
    pub cert: PathBuf,
    /// The leaf's key (PKCS#8).
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("the openssl CLI is needed to make test certificates: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh CA named `name` and a leaf for `sans` (e.g. `DNS:localhost,IP:127.0.0.1`), in
/// `dir` as `<name>-ca.crt`, `<name>.crt`, `<name>.key`.
pub fn make(dir: &Path, name: &str, sans: &str) -> Pair {
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.crt");
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let cert = format!("{name}.crt");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-days",
        "2",
        "-subj",
        "/CN=jobwarden test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(dir, &args);
    let san = format!("subjectAltName={sans}");
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-subj",
        "/CN=jobwarden webhook",
        "-addext",
        &san,
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
            "-out",
            &cert,
        ],
    );
    Pair {
        ca: dir.join(ca),
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// A reqwest client that trusts only `ca`.
pub fn client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("read the CA");
    let cert = reqwest::Certificate::from_pem(&pem).expect("a PEM certificate");
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .http1_only()
        .build()
        .expect("client")
}
