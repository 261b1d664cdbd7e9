//! The one test command (`scripts/test.sh`) and the CI entry point (`.ci/run`): both pass
//! shellcheck; `--check` finds everything on this machine; with tools missing, `--check` names
//! each one with its package and exits 1, installing nothing; and a plain run installs them with
//! apt-get when root (else reports them) before handing over to `cargo test --workspace` (here a
//! stand-in apt-get and cargo on a private PATH, so the test changes nothing on the host).

use std::{path::Path, process::Command};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn which(tool: &str) -> String {
    if tool == "python3" {
        // The interpreter itself, not a wrapper such as a pyenv shim that needs its own PATH.
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        return String::from_utf8(out.stdout).unwrap().trim().to_string();
    }
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{tool} is not installed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn scripts_pass_shellcheck() {
    let out = Command::new("shellcheck")
        .args(["scripts/test.sh", ".ci/run"])
        .current_dir(ROOT)
        .output()
        .expect("shellcheck runs (apt-get install shellcheck; scripts/test.sh does)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn check_finds_everything_here() {
    let out = Command::new(format!("{ROOT}/scripts/test.sh"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_names_what_is_missing_and_how_to_install_it() {
    // A PATH with the script's own needs and cargo, but none of the servers and tools.
    let dir = std::env::temp_dir().join(format!("chat4all-test-sh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for tool in ["bash", "dirname", "python3", "cargo"] {
        let link = dir.join(tool);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(Path::new(&which(tool)), &link).unwrap();
    }
    let out = Command::new(which("bash"))
        .arg(format!("{ROOT}/scripts/test.sh"))
        .arg("--check")
        .env("PATH", &dir)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for (tool, package) in [
        ("redis-server", "redis-server"),
        ("redis-sentinel", "redis-sentinel"),
        ("shellcheck", "shellcheck"),
        ("promtool", "prometheus"),
        ("curl", "curl"),
    ] {
        assert!(
            stderr.contains(&format!("  {tool} (apt-get install {package})")),
            "{tool}: {stderr}"
        );
    }
    assert!(!stderr.contains("  cargo"), "{stderr}");
}

/// A private PATH with the script's own needs and `extra` (name -> shell script) in it.
fn fake_path(name: &str, extra: &[(&str, &str)]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("chat4all-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for tool in ["bash", "dirname", "python3"] {
        std::os::unix::fs::symlink(Path::new(&which(tool)), dir.join(tool)).unwrap();
    }
    for (tool, script) in extra {
        let path = dir.join(tool);
        std::fs::write(&path, format!("#!{}\n{script}\n", which("bash"))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

#[test]
fn a_plain_run_installs_what_is_missing_as_root_then_runs_cargo_test() {
    // apt-get "installs" a package by dropping an executable of the tool's name on the PATH.
    let apt = r#"dir=$(dirname "$0"); echo "apt-get $*" >> "$dir/apt.log"
[ "$1" = install ] || exit 0
for p in "$@"; do case $p in -*|install) ;; prometheus) t=promtool ;; *) t=$p ;; esac
  [ -n "${t:-}" ] && printf '#!/bin/sh\n' > "$dir/$t" && chmod +x "$dir/$t"; t=; done"#;
    let dir = fake_path(
        "test-sh-install",
        &[("apt-get", apt), ("cargo", r#"echo "cargo $*""#)],
    );
    // `dirname` and `chmod` for the stand-in apt-get.
    std::os::unix::fs::symlink(Path::new(&which("chmod")), dir.join("chmod")).unwrap();
    let out = Command::new(which("bash"))
        .arg(format!("{ROOT}/scripts/test.sh"))
        .args(["--", "--no-run"])
        .env("PATH", &dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let apt_log = std::fs::read_to_string(dir.join("apt.log")).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(apt_log.starts_with("apt-get update"), "{apt_log}");
        let install = apt_log.lines().find(|l| l.contains(" install ")).unwrap();
        for package in [
            "redis-server",
            "redis-sentinel",
            "shellcheck",
            "prometheus",
            "curl",
        ] {
            assert!(install.contains(package), "{package}: {install}");
        }
        assert!(
            stdout
                .trim_end()
                .ends_with("cargo test --workspace --no-run"),
            "{stdout}"
        );
    } else {
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        assert!(
            apt_log.is_empty(),
            "installs nothing without root: {apt_log}"
        );
        assert!(stderr.contains("redis-server (apt-get install redis-server)"));
    }
}
