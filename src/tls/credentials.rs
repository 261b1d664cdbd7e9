//! The certificate chain and private key of `TLS_CERT_FILE` and `TLS_KEY_FILE`: read, parsed
//! and checked by one function ([`Credentials::load`]) for configuration validation (before any
//! bind), start-up and every SIGHUP reload, so they accept exactly the same files.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};

use super::validity::Validity;

/// Why the certificate or key cannot be used. `Display` is one line, never key material.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A file could not be read.
    #[error("cannot read '{path}': {source}")]
    Read {
        /// Which setting.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("'{0}' holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key.
    #[error("'{0}' holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    /// A PEM section that does not decode.
    #[error("'{path}' is not valid PEM: {message}")]
    BadPem {
        /// Which setting.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        message: String,
    },
    /// The key is unusable, or not the key of the first certificate.
    #[error("the key in '{key}' does not fit the certificate in '{cert}': {message}")]
    Mismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// rustls's reason.
        message: String,
    },
}

impl CredentialsError {
    /// The environment variable to name in the configuration error.
    pub fn variable(&self) -> &'static str {
        match self {
            CredentialsError::Read { var, .. } | CredentialsError::BadPem { var, .. } => {
                if *var == "TLS_CERT_FILE" {
                    "tls_cert_file"
                } else {
                    "tls_key_file"
                }
            }
            CredentialsError::NoCertificate(_) => "tls_cert_file",
            CredentialsError::NoKey(_) | CredentialsError::Mismatch { .. } => "tls_key_file",
        }
    }
}

/// A certificate chain with its matching key, ready to serve.
pub struct Credentials {
    /// Chain and signing key, as rustls serves them.
    pub key: Arc<CertifiedKey>,
    /// The first certificate's validity dates, when they could be read.
    pub validity: Option<Validity>,
}

impl Credentials {
    /// Reads both files and checks that the key belongs to the first certificate.
    ///
    /// # Errors
    ///
    /// Unreadable file, no certificate, no key, or a key that does not match.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, CredentialsError> {
        let cert_pem = read(cert, "TLS_CERT_FILE")?;
        let key_pem = read(key, "TLS_KEY_FILE")?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CredentialsError::BadPem {
                var: "TLS_CERT_FILE",
                path: cert.to_owned(),
                message: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(CredentialsError::NoCertificate(cert.to_owned()));
        }
        let private = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(private) => private,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(CredentialsError::NoKey(key.to_owned()));
            }
            Err(e) => {
                return Err(CredentialsError::BadPem {
                    var: "TLS_KEY_FILE",
                    path: key.to_owned(),
                    message: e.to_string(),
                });
            }
        };
        let validity = Validity::of(&chain[0]);
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, private, &provider).map_err(|e| {
            CredentialsError::Mismatch {
                key: key.to_owned(),
                cert: cert.to_owned(),
                message: e.to_string(),
            }
        })?;
        Ok(Self {
            key: Arc::new(certified),
            validity,
        })
    }

    /// The provider every gateway TLS object uses (ring, as for rediss://).
    pub fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }
}

fn read(path: &Path, var: &'static str) -> Result<Vec<u8>, CredentialsError> {
    std::fs::read(path).map_err(|source| CredentialsError::Read {
        var,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn loads_a_matching_pair_and_names_each_problem() {
        let dir = std::env::temp_dir().join(format!("c4a-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = pair();
        let (_, other_key) = pair();
        let c = write(&dir, "c.pem", &cert);
        let k = write(&dir, "k.pem", &key);
        let loaded = Credentials::load(&c, &k).unwrap();
        assert!(loaded.validity.is_some());

        let missing = dir.join("missing.pem");
        let err = Credentials::load(&missing, &k).err().unwrap();
        assert_eq!(err.variable(), "tls_cert_file");
        let err = Credentials::load(&c, &missing).err().unwrap();
        assert_eq!(err.variable(), "tls_key_file");
        let err = Credentials::load(&k, &k).err().unwrap();
        assert!(matches!(err, CredentialsError::NoCertificate(_)), "{err}");
        let err = Credentials::load(&c, &c).err().unwrap();
        assert!(matches!(err, CredentialsError::NoKey(_)), "{err}");
        let wrong = write(&dir, "wrong.pem", &other_key);
        let err = Credentials::load(&c, &wrong).err().unwrap();
        assert!(matches!(err, CredentialsError::Mismatch { .. }), "{err}");
        assert!(!err.to_string().contains("PRIVATE"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
