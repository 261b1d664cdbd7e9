//! wss:// on the real binary, for what needs processes: session resumption across two gateway
//! processes that share `TLS_TICKET_KEY_FILE` (and not with one that does not), and the
//! certificate rotated by SIGHUP while notifications flow and clients keep connecting.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
};

use common::{
    next_json,
    process::{Proc, Spawn, metric, wait_until},
    tls::*,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::runtime::Runtime;

/// A gateway process serving `certs` over wss:// (two shards), with `tickets` as its
/// `TLS_TICKET_KEY_FILE` if given.
fn spawn_tls(certs: &Certs, tickets: Option<&std::path::Path>) -> Proc {
    let mut spawn = Spawn::new()
        .env("TLS_CERT_FILE", certs.cert.to_str().unwrap())
        .env("TLS_KEY_FILE", certs.key.to_str().unwrap())
        .args(&["--shards", "2", "--pin-cores", "false"]);
    if let Some(path) = tickets {
        spawn = spawn.env("TLS_TICKET_KEY_FILE", path.to_str().unwrap());
    }
    spawn.start()
}

fn ws_addr(gw: &Proc) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], gw.ws))
}

/// Full and resumed handshakes a process has completed (all versions).
fn handshakes(gw: &Proc) -> (f64, f64) {
    let full = metric(
        gw.control,
        r#"websocket_tls_handshakes_total{version="1.3"}"#,
    ) + metric(
        gw.control,
        r#"websocket_tls_handshakes_total{version="1.2"}"#,
    );
    let resumed = metric(gw.control, "websocket_tls_resumed_handshakes_total");
    (full, resumed)
}

#[test]
fn resumption_works_across_processes_sharing_the_ticket_key_file() {
    let rt = Runtime::new().unwrap();
    let certs = Certs::new("resume");
    let tickets = certs.dir.join("tickets");
    std::fs::write(
        &tickets,
        "# test key, generated here\n0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let a = spawn_tls(&certs, Some(&tickets));
    let b = spawn_tls(&certs, Some(&tickets));
    let own = spawn_tls(&certs, None);

    for (cfg, version) in [(certs.client(), "1.3"), (certs.client_tls12(), "1.2")] {
        // A full handshake with A leaves the client a ticket (read with the greeting).
        let first = rt.block_on(wss_connect(ws_addr(&a), cfg.clone(), "r1"));
        let (_, resumed_a) = handshakes(&a);
        // B was never talked to, yet resumes A's session: the ticket key is shared.
        let (_, before_b) = handshakes(&b);
        let second = rt.block_on(wss_connect(ws_addr(&b), cfg.clone(), "r2"));
        assert_eq!(
            handshakes(&b).1,
            before_b + 1.0,
            "TLS {version}: B resumed A's session"
        );
        // A process with its own random keys cannot: a full handshake, still served.
        let (full_own, resumed_own) = handshakes(&own);
        let third = rt.block_on(wss_connect(ws_addr(&own), cfg, "r3"));
        assert_eq!(
            handshakes(&own),
            (full_own + 1.0, resumed_own),
            "TLS {version}"
        );
        assert_eq!(handshakes(&a).1, resumed_a);
        drop((first, second, third));
    }
    assert_eq!(
        metric(
            b.control,
            r#"websocket_tls_handshakes_total{version="1.2"}"#
        ),
        1.0
    );
}

/// The server certificate a new TLS handshake to `addr` gets.
fn served_certificate(rt: &Runtime, addr: SocketAddr, certs: &Certs) -> CertificateDer<'static> {
    rt.block_on(async {
        let tls = tls_connect(addr, certs.client()).await;
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    })
}

/// The leaf certificate in the served chain file.
fn leaf_in_file(certs: &Certs) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(&certs.cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

#[test]
fn sighup_rotates_the_certificate_under_load_and_keeps_every_connection() {
    let rt = Runtime::new().unwrap();
    let mut certs = Certs::new("rotate");
    let mut gw = spawn_tls(&certs, None);
    let addr = ws_addr(&gw);
    let first = leaf_in_file(&certs);
    assert_eq!(served_certificate(&rt, addr, &certs), first);

    // Clients receiving a steady stream of notifications, numbered per user.
    const USERS: usize = 16;
    let mut readers = Vec::new();
    for i in 0..USERS {
        let mut ws = rt.block_on(wss_connect(addr, certs.client(), &format!("load{i}")));
        readers.push(rt.spawn(async move {
            let mut next = 0u64;
            loop {
                let v = next_json(&mut ws).await;
                if v["end"] == true {
                    return (next, ws);
                }
                assert_eq!(v["n"], next, "in order, none lost");
                next += 1;
            }
        }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let control = SocketAddr::from(([127, 0, 0, 1], gw.control));
    let publisher = {
        let (stop, sent) = (stop.clone(), sent.clone());
        rt.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                for i in 0..USERS {
                    publish(control, &format!("load{i}"), &format!(r#"{{"n":{n}}}"#)).await;
                }
                n += 1;
                sent.store(n, Relaxed);
            }
            n
        })
    };
    // New handshakes keep coming during the rotation too.
    let connector = {
        let (stop, cfg) = (stop.clone(), certs.client());
        rt.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                let ws = wss_connect(addr, cfg.clone(), &format!("new{n}")).await;
                drop(ws);
                n += 1;
            }
            n
        })
    };
    wait_until("notifications flowing", || sent.load(Relaxed) >= 20);

    certs.issue("second");
    let second = leaf_in_file(&certs);
    assert_ne!(first, second);
    gw.signal(libc::SIGHUP);
    let done = gw.wait_log("reload finished");
    assert_eq!(done["fields"]["failed"], 0, "{done}");
    assert_eq!(served_certificate(&rt, addr, &certs), second);
    let at_reload = sent.load(Relaxed);
    wait_until("notifications flowing after the reload", || {
        sent.load(Relaxed) >= at_reload + 20
    });

    stop.store(true, Relaxed);
    let rounds = rt.block_on(publisher).unwrap();
    assert!(
        rt.block_on(connector).unwrap() > 0,
        "no handshake during the load"
    );
    for i in 0..USERS {
        rt.block_on(publish(control, &format!("load{i}"), r#"{"end":true}"#));
    }
    let mut kept = Vec::new();
    for reader in readers {
        let (got, ws) = rt.block_on(reader).unwrap();
        assert_eq!(
            got, rounds,
            "every notification reached every old connection"
        );
        kept.push(ws);
    }
    assert_eq!(
        metric(gw.control, "websocket_connections_active"),
        USERS as f64
    );

    // A key that does not match the certificate: refused, the second pair stays in force.
    let stray = rcgen::KeyPair::generate().unwrap();
    write_atomic(&certs.key, &stray.serialize_pem());
    gw.signal(libc::SIGHUP);
    gw.wait_log("reload failed; keeping the previous value");
    wait_until("the second reload to finish", || {
        gw.count_log("reload finished") == 2
    });
    assert_eq!(served_certificate(&rt, addr, &certs), second);
    assert!(gw.running());
    drop(kept);
}

/// Publishes `payload` to `user` through the internal port; expects one recipient.
async fn publish(control: SocketAddr, user: &str, payload: &str) {
    let body = format!(r#"{{"user_id":"{user}","payload":{payload}}}"#);
    let req = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = common::http(control, req.as_bytes()).await;
    assert_eq!((status, answer.as_str()), (200, r#"{"recipients":1}"#));
}
