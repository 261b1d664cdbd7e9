//! WebSocket echo server on the gateway's own frame decoder, reader and connection code, for
//! RFC 6455 conformance runs with Autobahn|Testsuite (`scripts/autobahn.sh`).
//!
//! ```sh
//! cargo run --release --example autobahn_echo -- --port 9001 [--driver epoll|io-uring]
//! ```
//!
//! Serves `ws://127.0.0.1:PORT/` (any path, no token), echoes every text and binary message,
//! and prints its URL once listening. Message limit raised to 64 MiB for the suite's section 9.
//! Test-only: it is not part of the gateway binary and reaches internals through the hidden
//! `chat4all_gateway::internals` module.

use std::{net::TcpListener, process::ExitCode};

use chat4all_gateway::internals::{Driver, serve_echo};

/// Largest client message echoed (the suite sends up to 16 MiB).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

fn main() -> ExitCode {
    let mut port = 9001u16;
    let mut driver = if monoio::utils::detect_uring() {
        Driver::IoUring
    } else {
        Driver::Epoll
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--port", Some(p)) => match p.parse() {
                Ok(p) => port = p,
                Err(_) => return usage(&format!("--port {p}: not a port number")),
            },
            ("--driver", Some(d)) if d == "epoll" => driver = Driver::Epoll,
            ("--driver", Some(d)) if d == "io-uring" => driver = Driver::IoUring,
            _ => return usage(&format!("unexpected argument {arg}")),
        }
    }
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("autobahn_echo: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let port = listener.local_addr().map_or(port, |a| a.port());
    println!("ws://127.0.0.1:{port}/ ({})", driver.as_str());
    if let Err(e) = serve_echo(listener, driver, MAX_MESSAGE_BYTES) {
        eprintln!("autobahn_echo: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "autobahn_echo: {problem}\nusage: autobahn_echo --port PORT [--driver epoll|io-uring]"
    );
    ExitCode::from(64)
}
