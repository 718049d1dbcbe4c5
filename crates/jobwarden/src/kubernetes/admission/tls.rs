//! The webhook's certificate: PEM files read into a rustls `CertifiedKey` (aws-lc-rs, the
//! provider kube already brings), served through a resolver that a background task swaps when
//! the files change, so a renewed Secret (cert-manager's, or one updated by hand) is served
//! without a restart. A change that does not load (a half-written pair, a key that does not
//! match) is logged and the previous certificate stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// How often the files are compared with what is served.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Why a certificate pair cannot be served. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No `CERTIFICATE` block.
    #[error("{file}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")]
    NoCertificate {
        /// The file.
        file: PathBuf,
    },
    /// No private key block.
    #[error("{file}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it")]
    NoKey {
        /// The file.
        file: PathBuf,
    },
    /// A PEM block that does not decode.
    #[error("{file}: {problem}")]
    Pem {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The key is not usable, or not the certificate's.
    #[error("{key} does not go with {cert}: {problem}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        problem: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads and checks a certificate chain (leaf first) and its key from their PEM bytes.
pub fn parse(
    cert_file: &Path,
    cert_pem: &[u8],
    key_file: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            file: cert_file.to_owned(),
            problem: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            file: cert_file.to_owned(),
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(k) => k,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                file: key_file.to_owned(),
            });
        }
        Err(e) => {
            return Err(TlsError::Pem {
                file: key_file.to_owned(),
                problem: e.to_string(),
            });
        }
    };
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Pair {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        problem: match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "the key is another certificate's (their public keys differ)".to_owned()
            }
            e => e.to_string(),
        },
    })
}

fn read(file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|source| TlsError::Read {
        file: file.to_owned(),
        source,
    })
}

/// Reads and checks the pair as the server would load it (`config check`, `run`).
pub fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    parse(cert_file, &read(cert_file)?, key_file, &read(key_file)?)
}

/// The certificate being served, and the file contents it came from.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

/// Serves the current certificate to every handshake; [`CertResolver::reload`] swaps it.
#[derive(Debug)]
pub struct CertResolver {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Loaded>,
}

impl CertResolver {
    /// Loads the pair.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, TlsError> {
        let cert_pem = read(cert_file)?;
        let key_pem = read(key_file)?;
        let key = parse(cert_file, &cert_pem, key_file, &key_pem)?;
        Ok(Arc::new(CertResolver {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(Loaded {
                key: Arc::new(key),
                cert_pem,
                key_pem,
            }),
        }))
    }

    /// Re-reads the files; serves them from now on when they changed and load. `Ok(true)`:
    /// a new certificate is served; `Ok(false)`: unchanged; `Err`: changed but not loadable
    /// (the previous one is still served).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let cert_pem = read(&self.cert_file)?;
        let key_pem = read(&self.key_file)?;
        {
            let now = self.current.read().unwrap_or_else(|e| e.into_inner());
            if now.cert_pem == cert_pem && now.key_pem == key_pem {
                return Ok(false);
            }
        }
        let key = parse(&self.cert_file, &cert_pem, &self.key_file, &key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Loaded {
            key: Arc::new(key),
            cert_pem,
            key_pem,
        };
        Ok(true)
    }

    /// The leaf certificate being served (DER).
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        let now = self.current.read().unwrap_or_else(|e| e.into_inner());
        now.key.cert.first().cloned()
    }

    /// Polls the files every `every` until `stop` turns true, logging each reload and each
    /// change that does not load (once per distinct content).
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut last_error: Option<String> = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            let result = tokio::task::spawn_blocking(move || this.reload()).await;
            match result {
                Ok(Ok(true)) => {
                    last_error = None;
                    tracing::info!(
                        "admission: serving the new certificate of {}",
                        self.cert_file.display()
                    );
                }
                Ok(Ok(false)) => last_error = None,
                Ok(Err(e)) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(
                            "admission: cannot reload the certificate: {text}; still serving the previous one"
                        );
                        last_error = Some(text);
                    }
                }
                Err(e) => tracing::warn!("admission: certificate reload task failed: {e}"),
            }
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .key
                .clone(),
        )
    }
}

/// The server's TLS configuration: TLS 1.2 and 1.3, HTTP/1.1, the resolver's certificate.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pair {
            cert: resolver.cert_file.clone(),
            key: resolver.key_file.clone(),
            problem: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
