//! Signals, on the real binary: nothing but SIGKILL ends the gateway without its drain.
//! SIGTERM, SIGINT and SIGQUIT drain (a second exits at once); SIGHUP reloads the log filter
//! and the JWT key; every other signal whose default would end the process is logged and
//! ignored. Connections stay open through all but the drain.

mod common;

use common::{
    Client, close_code, next_json,
    process::{Proc, Spawn, http, wait_until},
};
use tokio::runtime::Runtime;

/// Connects to a process as `user` (with a token signed by `secret`), greeting consumed.
fn connect(rt: &Runtime, gw: &Proc, user: &str, secret: &str) -> Client {
    let token = chat4all_gateway::internals::issue_hs256(secret.as_bytes(), user, 3600);
    let url = format!("ws://127.0.0.1:{}/notifications?token={token}", gw.ws);
    rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade");
        assert_eq!(next_json(&mut ws).await["type"], "connected");
        ws
    })
}

/// The HTTP status of an upgrade attempt with a token signed by `secret`.
fn upgrade_status(rt: &Runtime, gw: &Proc, secret: &str) -> u16 {
    let token = chat4all_gateway::internals::issue_hs256(secret.as_bytes(), "probe", 3600);
    let url = format!("ws://127.0.0.1:{}/notifications?token={token}", gw.ws);
    rt.block_on(async {
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("unexpected error: {e}"),
        }
    })
}

/// Publishes to `user` through the internal port and checks `ws` receives it.
fn assert_delivers(rt: &Runtime, gw: &Proc, ws: &mut Client, user: &str, n: u32) {
    let body = format!(r#"{{"user_id":"{user}","payload":{{"n":{n}}}}}"#);
    let (status, answer) = http(gw.control, "POST", "/v1/publish", &[], &body);
    assert_eq!((status, answer.as_str()), (200, r#"{"recipients":1}"#));
    let got = rt.block_on(next_json(ws));
    assert_eq!(got["n"], n, "{got}");
}

#[test]
fn signals_that_used_to_kill_are_logged_and_ignored_and_connections_stay_open() {
    let rt = Runtime::new().unwrap();
    let mut gw = Spawn::new().start();
    let mut ws = connect(&rt, &gw, "steady", common::SECRET);
    let signals = [
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGIO, "SIGIO"),
        (libc::SIGPWR, "SIGPWR"),
        (libc::SIGSTKFLT, "SIGSTKFLT"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGXFSZ, "SIGXFSZ"),
        (libc::SIGRTMIN(), "SIGRTMIN+0"),
        (libc::SIGRTMIN() + 7, "SIGRTMIN+7"),
        (libc::SIGRTMAX(), "SIGRTMIN+30"),
    ];
    for (n, (signal, name)) in signals.into_iter().enumerate() {
        gw.signal(signal);
        gw.wait_log_where("signal ignored", |f| f["signal"] == name);
        assert!(gw.running(), "{name} ended the gateway");
        assert_delivers(&rt, &gw, &mut ws, "steady", n as u32);
    }
    // SIGHUP with nothing reloadable (JWT_SECRET, RUST_LOG from the environment) changes nothing.
    gw.signal(libc::SIGHUP);
    let done = gw.wait_log("reload finished");
    assert_eq!(done["fields"]["failed"], 0, "{done}");
    assert!(gw.running());
    assert_delivers(&rt, &gw, &mut ws, "steady", 99);
    assert_eq!(upgrade_status(&rt, &gw, common::SECRET), 101);
}

#[test]
fn sighup_reloads_the_jwt_secret_and_the_log_filter_and_keeps_connections() {
    let rt = Runtime::new().unwrap();
    let dir = std::env::temp_dir().join(format!("chat4all-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (secret_file, filter_file) = (dir.join("jwt-secret"), dir.join("log-filter"));
    let (old, new) = (
        common::SECRET,
        "a-rotated-secret-0123456789abcdef0123456789",
    );
    std::fs::write(&secret_file, format!("{old}\n")).unwrap();
    std::fs::write(&filter_file, "info\n").unwrap();
    let mut gw = Spawn::new()
        .env("JWT_SECRET", "")
        .env("JWT_SECRET_FILE", secret_file.to_str().unwrap())
        .env("LOG_FILTER_FILE", filter_file.to_str().unwrap())
        .start();
    let mut ws = connect(&rt, &gw, "kept", old);
    assert_eq!(
        gw.count_log("connected"),
        0,
        "per-connection lines are debug"
    );

    std::fs::write(&secret_file, format!("{new}\n")).unwrap();
    std::fs::write(
        &filter_file,
        "# more detail for a while\ninfo,chat4all_gateway=debug\n",
    )
    .unwrap();
    gw.signal(libc::SIGHUP);
    let done = gw.wait_log("reload finished");
    assert_eq!(
        (&done["fields"]["applied"], &done["fields"]["failed"]),
        (&2.into(), &0.into()),
        "{done}"
    );
    assert!(gw.running());
    // The new secret signs new connections; the old one no longer does.
    assert_eq!(upgrade_status(&rt, &gw, old), 401);
    let _fresh = connect(&rt, &gw, "fresh", new);
    // The new filter is in force: per-connection debug lines appear.
    gw.wait_log_where("connected", |f| f["user"] == "fresh");
    // The connection made with the old secret is still open and served.
    assert_delivers(&rt, &gw, &mut ws, "kept", 1);

    // An unusable new key is refused and the previous one stays in force.
    std::fs::write(&secret_file, "too-short\n").unwrap();
    gw.signal(libc::SIGHUP);
    gw.wait_log("reload failed; keeping the previous value");
    wait_until("the second reload to finish", || {
        gw.count_log("reload finished") == 2
    });
    assert!(!gw.stderr().contains("too-short"), "never logs the secret");
    assert_eq!(upgrade_status(&rt, &gw, new), 101);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts a gateway with a connected client, sends `signal`, and checks the client is closed
/// with 1001 and the process exits 0.
fn drains_on(signal: i32) {
    let rt = Runtime::new().unwrap();
    let mut gw = Spawn::new().env("DRAIN_SECONDS", "1").start();
    let mut ws = connect(&rt, &gw, "leaving", common::SECRET);
    gw.signal(signal);
    assert_eq!(rt.block_on(close_code(&mut ws)), 1001);
    assert_eq!(gw.wait_exit(), Some(0));
}

#[test]
fn sigterm_drains_with_1001_and_exits_zero() {
    drains_on(libc::SIGTERM);
}

#[test]
fn sigint_drains_with_1001_and_exits_zero() {
    drains_on(libc::SIGINT);
}

#[test]
fn sigquit_drains_with_1001_and_exits_zero() {
    drains_on(libc::SIGQUIT);
}

#[test]
fn a_second_shutdown_signal_exits_at_once() {
    let rt = Runtime::new().unwrap();
    let mut gw = Spawn::new().env("DRAIN_SECONDS", "300").start();
    let _ws = connect(&rt, &gw, "stays", common::SECRET);
    gw.signal(libc::SIGTERM);
    // The drain has started (readiness fails at once) and the process is still draining.
    wait_until("readiness to fail", || {
        http(gw.control, "GET", "/readyz", &[], "").0 == 503
    });
    assert!(gw.running(), "still draining after one signal");
    // A reload during the drain still works.
    gw.signal(libc::SIGHUP);
    gw.wait_log("reload finished");
    gw.signal(libc::SIGQUIT);
    // Exits long before its 300 s drain would end.
    assert_eq!(gw.wait_exit(), Some(1));
}
