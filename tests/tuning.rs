//! Runs the tuning scripts' test (`tests/tuning_scripts.sh`): shellcheck, `check.sh` on this
//! host, `apply.sh --dry-run`, and `apply.sh`/`--revert` against a fake /proc/sys tree.

use std::process::Command;

#[test]
fn tuning_scripts() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tuning_scripts.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tuning script test failed:\n{stdout}\n{stderr}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.ends_with("passed, 0 failed"),
        "unexpected summary: {summary}"
    );
}
