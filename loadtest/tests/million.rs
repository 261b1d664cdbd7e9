//! Smoke run of `bench/million.sh` (issue 12), so the script keeps working: a few thousand
//! connections over two gateway processes, every phase of the capacity run shortened, with this
//! workspace's binaries. Checks the report adds up and that every process the script started is
//! gone when it exits.
//!
//! The gateway is `$CHAT4ALL_GATEWAY_BIN`, else the newest `target/{release,debug}/chat4all-gateway`
//! (build it first: `cargo build -p chat4all-gateway`), else built once into
//! `target/smoke-gateway`. Needs `redis-server`, `python3` and `bash` on PATH.

use std::process::Command;

mod support {
    pub mod gateway_bin;
}

use serde_json::Value;
use support::gateway_bin::{gateway_bin, root};

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; it is gone for our purposes once it stopped running.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

#[test]
fn million_script_smoke() {
    let out_dir = std::env::temp_dir().join(format!("million-smoke-{}", std::process::id()));
    let run_dir = std::env::temp_dir().join(format!("million-smoke-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&run_dir).unwrap();
    let out = Command::new("bash")
        .arg(root().join("bench/million.sh"))
        .envs([
            ("CONNS", "3000"),
            ("GATEWAYS", "2"),
            ("CONNS_PER_WORKER", "1500"),
            ("CONNECT_CONCURRENCY", "128"),
            ("IDLE_SECS", "2"),
            ("PING_INTERVAL", "1"),
            ("LATENCY_RATE", "200"),
            ("LATENCY_SECS", "2"),
            ("BCAST_USERS", "1000"),
            ("BCAST_BATCH", "300"),
            ("STORM_TIMEOUT", "90"),
            ("SAMPLE_MS", "500"),
            ("TUNE", "0"),
            ("MAX_TOTAL_SECS", "400"),
            ("KEEP_RUN_DIR", "1"),
        ])
        .env("OUT_DIR", &out_dir)
        .env("TMPDIR", &run_dir)
        .env("LOADTEST_BIN", env!("CARGO_BIN_EXE_chat4all-loadtest"))
        .env("GATEWAY_BIN", gateway_bin())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "million.sh failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    // Every process it started is gone.
    let pids_file = std::fs::read_dir(&run_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("pids"))
        .find(|p| p.exists())
        .expect("the run directory lists the PIDs it started");
    let pids: Vec<u32> = std::fs::read_to_string(&pids_file)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 4, "redis, two gateways, the load generator");
    for p in &pids {
        assert!(!alive(*p), "pid {p} outlived the script");
    }
    let report = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a JSON report");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["consistent"], true, "{v:#}");
    assert_eq!(u(&v["connect"]["established"]), 3000, "{:#}", v["connect"]);
    let c = &v["capacity"];
    assert_eq!(u(&c["gateways"]), 2);
    assert_eq!(c["fds_connected"].as_array().unwrap().len(), 2);
    assert!(u(&c["connected"]["gateways_rss_kb"]) > 0);
    assert!(c["timeline"].as_array().unwrap().len() >= 3);
    let idle = &c["idle"];
    let (pings, pongs) = (u(&idle["pings_sent"]), u(&idle["pongs"]));
    // Pongs of the last pings may still be on their way when the window closes.
    assert!(
        pings > 0 && pongs <= pings && pongs * 2 >= pings,
        "{idle:#}"
    );
    let lat = &c["latency"]["deliveries"];
    assert_eq!(lat["lost"], 0, "{lat:#}");
    let b = &c["broadcast"];
    assert_eq!(u(&b["requests"]), 4, "1000 users in batches of 300: {b:#}");
    assert_eq!(u(&b["request_errors"]), 0, "{b:#}");
    assert_eq!(u(&b["expected"]), 1000);
    assert_eq!(u(&b["delivered"]), 1000, "{b:#}");
    assert_eq!(u(&b["duplicates"]), 0);
    let s = &c["storm"];
    assert_eq!(s["all_back"], true, "{s:#}");
    assert!(u(&s["dropped"]) > 0 && u(&s["dropped"]) < 3000, "{s:#}");
    assert_eq!(c["fds_after_storm"].as_array().unwrap().len(), 1);
    let table = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "md"))
        .unwrap();
    let table = std::fs::read_to_string(table).unwrap();
    assert!(table.contains("| reconnect storm |"), "{table}");
    let svg = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "svg"))
        .unwrap();
    assert!(std::fs::read_to_string(svg).unwrap().starts_with("<svg"));
    // The secret and the API key travel in the environment, never on a command line.
    let command = v["command"].to_string();
    assert!(
        !command.contains("jwt-secret") && !command.contains("api-key"),
        "{command}"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
    let _ = std::fs::remove_dir_all(&run_dir);
}
