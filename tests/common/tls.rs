//! wss:// test support: certificates generated at test time (a CA and an ECDSA P-256 server
//! certificate for `localhost` and 127.0.0.1; no key is committed), written to a private
//! directory that is removed when the value drops, and a rustls client (tokio-rustls) under
//! tokio-tungstenite.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, RootCertStore,
    client::Resumption,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_tungstenite::WebSocketStream;

/// A TLS-wrapped WebSocket client.
pub type TlsClient = WebSocketStream<TlsStream<TcpStream>>;

/// A CA and the files a gateway serves, in a directory of their own.
pub struct Certs {
    /// The directory (removed on drop).
    pub dir: PathBuf,
    /// The CA certificate (PEM), what clients trust.
    pub ca: PathBuf,
    /// The server chain (leaf, then CA).
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
    /// The CA, for issuing more certificates.
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "chat4all test CA");
    params
}

impl Certs {
    /// A new CA and a server certificate in a fresh directory named after `name`.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "c4a-tls-{name}-{}-{:x}",
            std::process::id(),
            rand_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params().self_signed(&ca_key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let mut certs = Self {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
            ca,
            ca_params: ca_params(),
            ca_key,
        };
        certs.issue("first");
        certs
    }

    /// Issues a new server certificate (organisation `label`, to tell them apart) and
    /// replaces the served files with it, as a certificate rotation does.
    pub fn issue(&mut self, label: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, label);
        let issuer = rcgen::Issuer::new(self.ca_params.clone(), &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let ca_pem = std::fs::read_to_string(&self.ca).unwrap();
        // Written beside, then renamed over: a reload never sees half a file.
        write_atomic(&self.cert, &format!("{}{ca_pem}", cert.pem()));
        write_atomic(&self.key, &key.serialize_pem());
    }

    /// Gateway flags serving these files.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert-file".into(),
            self.cert.display().to_string(),
            "--tls-key-file".into(),
            self.key.display().to_string(),
        ]
    }

    /// A client configuration trusting the CA, ALPN http/1.1, with a session cache of its own
    /// (clients sharing it resume each other's sessions).
    pub fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg.resumption = Resumption::in_memory_sessions(64);
        Arc::new(cfg)
    }

    /// The same, limited to TLS 1.2.
    pub fn client_tls12(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

/// A TLS connection to `addr` for `localhost`: the stream, after the handshake.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    cfg: Arc<ClientConfig>,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(super::WAIT, TlsConnector::from(cfg).connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake succeeds")
}

/// A wss:// client for `user` over `cfg`, its `connected` greeting consumed.
pub async fn wss_connect(
    addr: std::net::SocketAddr,
    cfg: Arc<ClientConfig>,
    user: &str,
) -> TlsClient {
    let tls = tls_connect(addr, cfg).await;
    let url = format!(
        "wss://localhost:{}/notifications?token={}",
        addr.port(),
        super::token(user)
    );
    let (mut ws, resp) =
        tokio::time::timeout(super::WAIT, tokio_tungstenite::client_async(url, tls))
            .await
            .expect("upgrade in time")
            .expect("upgrade accepted");
    assert_eq!(resp.status(), 101);
    let hello = super::next_json(&mut ws).await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["userId"], user);
    ws
}

/// Reads until a close frame arrives; returns its code.
pub async fn close_code_tls(ws: &mut TlsClient) -> u16 {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(super::WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Close(None))) => return 1005,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}
