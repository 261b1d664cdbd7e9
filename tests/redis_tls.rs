//! `rediss://`: the subscriber's own TLS connection (rustls, the system's roots) against a real
//! redis-server with TLS, through the binary (so that `SSL_CERT_FILE` can name a test CA in the
//! child's environment only).

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::redis::{RedisProc, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_chat4all-gateway");

/// Makes a CA and a `localhost` server certificate signed by it in `dir` with openssl.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let subj = |cn: &str| format!("/CN={cn}");
    run(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
    ]
    .into_iter()
    .chain([
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        &subj("chat4all test CA"),
    ])
    .collect::<Vec<_>>());
    run(&[
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
    ]
    .into_iter()
    .chain(["-subj", &subj("localhost")])
    .collect::<Vec<_>>());
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
}

/// The gateway process, killed however the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn subscribes_over_tls_and_delivers() {
    let dir = std::env::temp_dir().join(format!("chat4all-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certs(&dir);
    let tls_port = free_port();
    let file = |name: &str| dir.join(name).display().to_string();
    let (crt, key, ca) = (file("srv.crt"), file("srv.key"), file("ca.crt"));
    let redis = RedisProc::start_on(
        free_port(),
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &crt,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ],
    );
    let (ws_port, control_port) = (free_port(), free_port());
    let mut child = Child(
        Command::new(BIN)
            .env_clear()
            .env("SSL_CERT_FILE", &ca)
            .env("JWT_SECRET", common::SECRET)
            .env("REDIS_URL", format!("rediss://localhost:{tls_port}/"))
            .env("REDIS_SUBSCRIPTION", "per-user")
            .args(["--websocket-port", &ws_port.to_string()])
            .args(["--metrics-port", &control_port.to_string()])
            .args([
                "--bind-host",
                "127.0.0.1",
                "--metrics-bind-host",
                "127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get(control_port, "/readyz").starts_with("HTTP/1.1 200") {
        if Instant::now() > deadline {
            drop(child);
            panic!(
                "not subscribed over TLS:\n{}",
                log.join().unwrap().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Per-user mode: `connected` arrives only once Redis confirmed the SUBSCRIBE over TLS.
    let url = format!(
        "ws://127.0.0.1:{ws_port}/notifications?token={}",
        common::token("tina")
    );
    let (mut ws, _) = tungstenite::connect(url).unwrap();
    let hello = ws.read().unwrap();
    assert!(hello.to_text().unwrap().contains("connected"));
    assert_eq!(redis.publish("notifications:tina", r#"{"over":"tls"}"#), 1);
    let note = ws.read().unwrap();
    assert!(
        note.to_text().unwrap().contains(r#""over":"tls""#),
        "{note:?}"
    );
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
