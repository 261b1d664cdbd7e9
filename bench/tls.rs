//! wss:// on the shards: the server's CPU per TLS handshake and per encrypted delivery.
//!
//! Each handshake runs in memory between a rustls client (buffered API) and the gateway's own
//! server session (`tls::Session`, rustls's unbuffered API over caller-owned buffers, as a shard
//! drives it); only the server's calls are timed (`iter_custom`), in the thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`: time the thread spent descheduled on a shared machine does not
//! count), so the figures are the gateway's CPU per handshake, without sockets and without the
//! client's work. The inverse is handshakes per second per core.
//!
//! - full TLS 1.3 handshake with an ECDSA P-256 certificate (the recommended key), and with
//!   RSA-2048 beside it; a full TLS 1.2 handshake with ECDSA P-256;
//! - a TLS 1.3 handshake resumed from a session ticket (no certificate, no signature; what a
//!   reconnect storm costs when processes share `TLS_TICKET_KEY_FILE`);
//! - `Session::seal` of one notification frame (a 160-byte and a 4 KiB text frame): what a
//!   wss:// delivery adds per recipient, since a frame shared by many recipients is encrypted
//!   once per connection.
//!
//! Certificates are generated at run time with `openssl` (self-signed; the client does not
//! verify, its work is not measured).

use std::{hint::black_box, path::Path, process::Command, sync::Arc, time::Duration};

use chat4all_gateway::internals::{Acceptor, MAX_PENDING, Session, TlsFiles, encode_text};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

// The gateway binary's allocator, so allocation costs match production.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The shard's buffer sizes (scratch, plaintext, output).
const BUF: usize = 64 * 1024 + 256;

/// A key and self-signed certificate for `localhost`, made by `openssl req` with `newkey`.
fn certificate(dir: &Path, name: &str, newkey: &[&str]) -> TlsFiles {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(newkey)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs (the benchmark makes its certificates with it)");
    assert!(status.success(), "openssl req failed");
    TlsFiles {
        cert,
        key,
        tickets: None,
    }
}

/// Accepts any server certificate; signatures are not checked either (the client's work is
/// not what is measured).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client(tls12: bool, resume: bool) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = if resume {
        Resumption::in_memory_sessions(256)
    } else {
        Resumption::disabled()
    };
    Arc::new(cfg)
}

/// This thread's CPU time so far.
fn cpu_now() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// The shard's three buffers.
struct Buffers {
    input: Vec<u8>,
    plain: Vec<u8>,
    out: Vec<u8>,
}

impl Buffers {
    fn new() -> Self {
        Self {
            input: vec![0; BUF + MAX_PENDING],
            plain: vec![0; BUF + MAX_PENDING],
            out: vec![0; BUF],
        }
    }
}

/// One handshake; returns the server's time in it and the two ends.
fn handshake(
    acceptor: &Acceptor,
    cfg: &Arc<ClientConfig>,
    b: &mut Buffers,
) -> (Duration, ClientConnection, Session) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(cfg.clone(), name).unwrap();
    let started = cpu_now();
    let mut server = acceptor.session().unwrap();
    let mut spent = cpu_now() - started;
    let mut wire = Vec::new();
    loop {
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        if wire.is_empty() {
            assert!(!client.is_handshaking() && !server.is_handshaking());
            return (spent, client, server);
        }
        let started = cpu_now();
        let kept = server.take_pending(&mut b.input);
        b.input[kept..kept + wire.len()].copy_from_slice(&wire);
        let rx = server
            .receive(&mut b.input[..kept + wire.len()], &mut b.plain, &mut b.out)
            .unwrap();
        spent += cpu_now() - started;
        let mut from_server = &b.out[..rx.out];
        while !from_server.is_empty() {
            client.read_tls(&mut from_server).unwrap();
            client.process_new_packets().unwrap();
        }
    }
}

fn handshakes(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("c4a-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ecdsa = Acceptor::new(certificate(
        &dir,
        "ecdsa",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ))
    .unwrap();
    let rsa = Acceptor::new(certificate(&dir, "rsa", &["-newkey", "rsa:2048"])).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut b = Buffers::new();

    let mut g = c.benchmark_group("tls_handshake_server");
    g.throughput(Throughput::Elements(1))
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    let cases = [
        ("full_tls13_ecdsa_p256", &ecdsa, client(false, false)),
        ("full_tls13_rsa2048", &rsa, client(false, false)),
        ("full_tls12_ecdsa_p256", &ecdsa, client(true, false)),
    ];
    for (name, acceptor, cfg) in cases {
        g.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                (0..iters)
                    .map(|_| black_box(handshake(acceptor, &cfg, &mut b)).0)
                    .sum()
            })
        });
    }
    let resuming = client(false, true);
    let (_, _, first) = handshake(&ecdsa, &resuming, &mut b);
    assert!(!first.resumed());
    let (_, _, second) = handshake(&ecdsa, &resuming, &mut b);
    assert!(second.resumed(), "the client resumes from the ticket");
    g.bench_function("resumed_tls13_ticket", |bench| {
        bench.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (spent, _, server) = handshake(&ecdsa, &resuming, &mut b);
                    assert!(server.resumed());
                    spent
                })
                .sum()
        })
    });
    g.finish();

    // Encrypting one notification frame for one connection.
    let (_, client_end, mut server) = handshake(&ecdsa, &client(false, false), &mut b);
    let mut g = c.benchmark_group("tls_seal_per_delivery");
    for size in [160usize, 4096] {
        let frame = encode_text(&vec![b'x'; size - 4]);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{}_byte_frame", frame.len()), |bench| {
            bench.iter_custom(|iters| {
                let started = cpu_now();
                for _ in 0..iters {
                    black_box(server.seal(black_box(&frame), &mut b.out, false).unwrap());
                }
                cpu_now() - started
            })
        });
    }
    g.finish();
    drop(client_end);
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
