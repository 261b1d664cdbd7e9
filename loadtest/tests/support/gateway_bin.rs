//! Where the load generator's end-to-end tests find the gateway: `$CHAT4ALL_GATEWAY_BIN`, else the
//! newest `target/{release,debug}/chat4all-gateway` of this workspace (or of `$CARGO_TARGET_DIR`),
//! else one built once into `target/smoke-gateway` (its own target dir: the one running the test
//! may be locked by cargo).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The gateway binary (found or built once per test process).
pub fn gateway_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CHAT4ALL_GATEWAY_BIN") {
            return PathBuf::from(p);
        }
        let root = root();
        let mut dirs = vec![root.join("target")];
        if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
            dirs.insert(0, PathBuf::from(t));
        }
        let newest = dirs
            .iter()
            .flat_map(|d| ["release", "debug"].map(|p| d.join(p).join("chat4all-gateway")))
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .max();
        if let Some((_, p)) = newest {
            return p;
        }
        let dir = root.join("target").join("smoke-gateway");
        let st = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "-p",
                "chat4all-gateway",
                "--bin",
                "chat4all-gateway",
            ])
            .env("CARGO_TARGET_DIR", &dir)
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(st.success(), "building chat4all-gateway failed");
        dir.join("release").join("chat4all-gateway")
    })
}
