//! `wss://` clients: one rustls configuration per worker (ring provider, TLS 1.3 and 1.2, ALPN
//! `http/1.1`), trusting a given CA file or — for benchmarks only, loudly — anything.
//!
//! Session resumption: rustls's default store keeps a handful of tickets per server name, so in a
//! reconnect storm of thousands of clients to one name almost every reconnect would pay a full
//! handshake. Real clients each keep their own ticket; [`TicketPool`] models that with a pool of
//! up to one ticket per connection of the worker (TLS 1.3 tickets are single-use: a reconnect takes
//! one, and the new session's tickets refill the pool).

use std::{
    collections::VecDeque,
    fmt,
    sync::{Arc, Mutex},
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        ClientSessionStore,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

pub use crate::proto::TlsPlan;

/// Tickets kept per connection slot (a server sends two per TLS 1.3 session by default).
const TICKETS_PER_CONN: usize = 1;

/// The TLS side of a worker.
pub struct Client {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
}

impl Client {
    /// Builds the configuration for `plan`, with a ticket pool sized for `conns` connections.
    pub fn new(plan: &TlsPlan, conns: usize) -> Result<Self, String> {
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = if plan.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            let path = plan
                .ca_file
                .as_ref()
                .ok_or("wss:// needs --tls-ca-file (or --tls-insecure for benchmarks)")?;
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("reading {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| e.to_string())?;
            }
            if roots.is_empty() {
                return Err(format!("no certificate in {}", path.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::store(Arc::new(TicketPool::new(
            conns.max(1) * TICKETS_PER_CONN,
        )));
        let server_name = ServerName::try_from(plan.server_name.clone())
            .map_err(|e| format!("TLS server name {:?}: {e}", plan.server_name))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// Accepts any server certificate (signatures are still checked). `--tls-insecure` only.
struct AnyCert(Arc<CryptoProvider>);

impl fmt::Debug for AnyCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyCert")
    }
}

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A bounded pool of session tickets for one server (the oldest is dropped when full).
pub struct TicketPool {
    cap: usize,
    inner: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    kx_hint: Option<rustls::NamedGroup>,
    tls12: Option<rustls::client::Tls12ClientSessionValue>,
    tls13: VecDeque<rustls::client::Tls13ClientSessionValue>,
}

impl TicketPool {
    /// A pool of at most `cap` TLS 1.3 tickets.
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            inner: Mutex::new(Pool::default()),
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl fmt::Debug for TicketPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TicketPool({} tickets)", self.pool().tls13.len())
    }
}

impl ClientSessionStore for TicketPool {
    fn set_kx_hint(&self, _: ServerName<'static>, group: rustls::NamedGroup) {
        self.pool().kx_hint = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.pool().kx_hint
    }

    fn set_tls12_session(
        &self,
        _: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.pool().tls12 = Some(value);
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.pool().tls12.clone()
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        self.pool().tls12 = None;
    }

    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        let mut p = self.pool();
        if p.tls13.len() >= self.cap {
            p.tls13.pop_front();
        }
        p.tls13.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.pool().tls13.pop_back()
    }
}

#[cfg(test)]
#[path = "../../tests/support/wss_server.rs"]
mod wss_server;

#[cfg(test)]
mod tests {
    //! Against the small tokio-rustls server in `tests/support/wss_server.rs`.

    use std::{
        net::Ipv4Addr,
        rc::Rc,
        sync::atomic::Ordering,
        time::{Duration, Instant},
    };

    use super::super::{conn, reactor, state::Worker};
    use crate::{proto::WorkerPlan, wire::frame::opcode};

    use super::wss_server;

    fn plan(addr: std::net::SocketAddr, tls: super::TlsPlan) -> WorkerPlan {
        WorkerPlan {
            worker: 0,
            host: format!("localhost:{}", addr.port()),
            addr,
            path: "/notifications".into(),
            jwt_secret: "s".repeat(32),
            user_prefix: "u".into(),
            users: vec![0],
            conns_per_user: 1,
            source_ips: vec![Ipv4Addr::LOCALHOST],
            source_ports: None,
            connect_rate: 0.0,
            connect_concurrency: 4,
            connect_timeout_ms: 5000,
            redis: None,
            publish_api: None,
            tls: Some(tls),
            recover: false,
            payload_bytes: 0,
            reconnect: None,
            interval_ms: 1000,
            progress_ms: 250,
            seed: 1,
        }
    }

    fn local() -> std::net::SocketAddr {
        (Ipv4Addr::LOCALHOST, 0).into()
    }

    fn ca(name: &str) -> super::TlsPlan {
        super::TlsPlan {
            ca_file: Some(wss_server::tls_dir().join(name)),
            insecure: false,
            server_name: "localhost".into(),
        }
    }

    /// Polls `cond` every 5 ms until it holds or 10 s pass.
    async fn until(cond: impl Fn() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while !cond() {
            if Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    fn run(f: impl AsyncFnOnce()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f());
    }

    #[test]
    fn reconnect_resumes_the_session_and_the_reactor_speaks_tls() {
        run(async || {
            let server = wss_server::WssServer::start().await;
            let w = Worker::new(plan(server.addr, ca("ca.pem"))).unwrap();
            tokio::task::spawn_local(reactor::run(w.clone()));
            let target = "/notifications?token=t";
            let first = conn::open(&w, local(), target).await.unwrap();
            assert!(!first.resumed, "nothing to resume yet");
            assert_eq!(
                first.tls.as_ref().unwrap().alpn_protocol(),
                Some(&b"http/1.1"[..])
            );
            conn::install(&w, 0, first, false).unwrap();
            // Through the reactor: an encrypted ping out, the encrypted pong read and counted.
            assert!(reactor::send(&w, 0, opcode::TEXT, reactor::PING));
            assert!(until(|| w.pongs.get() == 1).await, "pong over TLS");
            // The server drops it; the reactor sees the end and frees the slot.
            server.drop_all();
            assert!(until(|| w.open.get() == 0).await, "drop detected");
            let again = conn::open(&w, local(), target).await.unwrap();
            assert!(again.resumed, "the reconnect resumed with a pooled ticket");
            assert_eq!(server.resumed.load(Ordering::SeqCst), 1);
            assert_eq!(server.full.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn a_reconnect_leaves_its_explicit_source_port_to_the_kernel() {
        // The same 4-tuple again would hash to the same SO_REUSEPORT listener: after a gateway is
        // killed, all its clients would land on the one survivor that took its slot.
        run(async || {
            let server = wss_server::WssServer::start().await;
            let mut p = plan(server.addr, ca("ca.pem"));
            p.source_ports = Some((40_123, 40_123));
            p.reconnect = Some(crate::proto::Backoff {
                min_ms: 1,
                max_ms: 2,
            });
            let w = Worker::new(p).unwrap();
            tokio::task::spawn_local(reactor::run(w.clone()));
            let slot = w.connect_slots.clone().acquire_owned().await.unwrap();
            conn::start(w.clone(), 0, slot).await;
            assert_eq!(w.open.get(), 1);
            let first = server.peers.lock().unwrap()[0];
            assert_eq!(first.port(), 40_123, "the ramp binds the explicit port");
            server.drop_all();
            assert!(
                until(|| server.peers.lock().unwrap().len() == 2 && w.open.get() == 1).await,
                "reconnected"
            );
            let again = server.peers.lock().unwrap()[1];
            assert_eq!(again.ip(), first.ip());
            assert_ne!(again.port(), 40_123, "a new port, so a new hash");
            w.stopping.set(true);
        });
    }

    #[test]
    fn an_unknown_ca_fails_as_tls_and_insecure_skips_the_check() {
        run(async || {
            let server = wss_server::WssServer::start().await;
            let w = Worker::new(plan(server.addr, ca("other-ca.pem"))).unwrap();
            let err = conn::open(&w, local(), "/n?token=t")
                .await
                .err()
                .expect("an unrelated CA must not verify the server");
            assert_eq!(err.kind(), "tls", "{err}");
            let insecure = super::TlsPlan {
                ca_file: None,
                insecure: true,
                server_name: "localhost".into(),
            };
            let w: Rc<Worker> = Worker::new(plan(server.addr, insecure)).unwrap();
            assert!(conn::open(&w, local(), "/n?token=t").await.is_ok());
            let missing = super::TlsPlan {
                ca_file: None,
                insecure: false,
                server_name: "localhost".into(),
            };
            assert!(
                super::Client::new(&missing, 1).is_err(),
                "a CA or --tls-insecure"
            );
        });
    }
}
